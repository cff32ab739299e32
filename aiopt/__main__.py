from aiopt.cli import main

main()
