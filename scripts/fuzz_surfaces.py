"""What users feed aiopt besides artifact bytes, for scripts/fuzz_loaders.py: an ONNX file's aiopt
metadata (by-batch routes, companions, serving, hf), Hugging Face folders (config.json, tokenizer
files, safetensors weights and their index), text data files, optimize journals cut short, and
Triton model and tensor names.

Each surface is a function (rng, case folder) -> outcome. A case is a finding when it raises
anything but aiopt's documented errors, when code shipped in a folder ran (its marker file
appears), or when a file appears or changes outside what the case may write (the `outside`
folder holds a secret file that routes and links point at).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

HOSTILE_VALUES = [None, 0, -1, 1, 2, 8, 10**6, 10**12, 2**70, 1.5, float("inf"), True, False, "", "many", "eight", "sixteen",
                  "/etc/passwd", "../outside/secret.onnx", "..", ".", "a/b", "main.onnx", "secret.onnx", ".hidden", "x" * 300, "\x00",
                  'x"\nbackend: "python', [], [1, 2], {}, {"x": 1}, "onnxruntime", "openvino", "python", "f32", "bf16", "0" * 64]
ROUTE_KEYS = ("max_batch", "runtime", "file", "sha256", "serving")
SERVING_KEYS = ("threads", "inference_precision", "trim_padding")
CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
               "model_type", "auto_map", "architectures", "type_vocab_size", "num_labels", "layer_norm_eps", "hidden_act",
               "torch_dtype", "pad_token_id", "position_embedding_type")
NAME_ALPHABET = "abcXYZ019_-. /\\\"'\n\t{}[]:#$é\x00"


class Surfaces:
    """The seed files each surface mutates, made once in `work`."""

    def __init__(self, work: Path, mutate):
        self.work, self.mutate = work, mutate
        self.outside = work / "outside"
        self.outside.mkdir()
        (self.outside / "secret.onnx").write_bytes(b"SECRET")
        self.marker = work / "MARKER"
        self.seed_dir = work / "seeds"
        self.seed_dir.mkdir()
        self._onnx_seed()
        self._hf_seed()
        self._journal_seed()

    # ------------------------------------------------------------ seeds

    def _onnx_seed(self):
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        import onnx
        from aiopt.artifacts import embed_metadata
        from aiopt.fileio import sha256_file

        def model(name):
            graph = helper.make_graph([helper.make_node("MatMul", [name, "w"], ["logits"])], "g",
                                      [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])],
                                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                                      [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
            return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

        companion = model("x")
        embed_metadata(companion, {"inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}], "companion_of": "main.onnx"})
        onnx.save(companion, str(self.seed_dir / "main.upto-b8.onnx"))
        main = model("x")
        self.metadata = {"inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}], "runtime": "onnxruntime",
                         "serving": {"threads": 1},
                         "dispatch": [{"max_batch": 8, "runtime": "onnxruntime", "file": "main.upto-b8.onnx",
                                       "sha256": sha256_file(self.seed_dir / "main.upto-b8.onnx"), "serving": {"threads": 1}},
                                      {"max_batch": None, "runtime": "onnxruntime"}],
                         "lineage": [{"step": "train"}, {"step": "quantize"}]}
        embed_metadata(main, self.metadata)
        onnx.save(main, str(self.seed_dir / "main.onnx"))
        self.model_factory = model

    def _hf_seed(self):
        import torch
        from transformers import BertConfig, BertModel, BertTokenizerFast

        from aiopt.artifacts.hf import import_transformers

        import_transformers()
        folder = self.seed_dir / "bert"
        folder.mkdir()
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat ran".split()]
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                             max_position_embeddings=32)).save_pretrained(folder)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
        self.hf = folder
        from aiopt.specs import TensorSpec

        self.text_spec = [TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64")]

    def _journal_seed(self):
        import optuna

        from aiopt.optimize.study import JOURNAL, open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        folder = self.seed_dir / "study"
        folder.mkdir()
        study = optuna.create_study(storage=open_storage(None, folder), study_name="s")
        for i in range(4):
            trial = study.ask()
            trial.suggest_int("k", 0, 10)
            study.tell(trial, float(i))
        self.journal_bytes = (folder / JOURNAL).read_bytes()

    # ------------------------------------------------------------ checks shared by every case

    def outside_state(self):
        return sorted((p.name, p.read_bytes()) for p in self.outside.iterdir())

    def foreign(self, before) -> str | None:
        """What a case did that it must not: run code from a folder, touch the outside folder."""
        if self.marker.exists():
            self.marker.unlink()
            return "code shipped in a folder ran (marker file written)"
        if self.outside_state() != before:
            shutil.rmtree(self.outside)
            self.outside.mkdir()
            (self.outside / "secret.onnx").write_bytes(b"SECRET")
            return "a file outside the case's output was written or changed"
        return None

    # ------------------------------------------------------------ surfaces

    def onnx_metadata(self, rng: random.Random, case: Path) -> str:
        """Hostile aiopt.json in a by-batch ONNX file: every reader (load, artifact_files, size,
        copy_artifact, deploy, runtime.load) must refuse it in one error or handle it."""
        import onnx

        from aiopt.artifacts import METADATA_KEY, artifact_files, artifact_size, copy_artifact, load_model
        from aiopt.export.triton import TritonConfig, deploy_triton

        for name in ("main.onnx", "main.upto-b8.onnx"):
            shutil.copyfile(self.seed_dir / name, case / name)
        if rng.random() < 0.15:  # a companion replaced by a link to the secret
            (case / "main.upto-b8.onnx").unlink()
            (case / "main.upto-b8.onnx").symlink_to(self.outside / "secret.onnx")
        if rng.random() < 0.1:
            (case / "secret.onnx").symlink_to(self.outside / "secret.onnx")
        metadata = json.loads(json.dumps(self.metadata))
        for _ in range(rng.randint(1, 3)):
            _poke(metadata, rng)
        text = json.dumps(metadata)
        if rng.random() < 0.1:
            text = self.mutate(text.encode(), rng)[0].decode("utf-8", "replace")
        model = onnx.load(str(case / "main.onnx"))
        for prop in model.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = text
        onnx.save(model, str(case / "main.onnx"))
        (case / "dest").mkdir()
        outcomes = []
        calls = [lambda: load_model(case / "main.onnx"), lambda: artifact_files(case / "main.onnx"),
                 lambda: artifact_size(case / "main.onnx"), lambda: copy_artifact(case / "main.onnx", case / "dest" / "copy.onnx"),
                 lambda: deploy_triton(case / "main.onnx", case / "repo", TritonConfig(name="m"))]
        if rng.random() < 0.2:
            from aiopt import runtime

            calls.append(lambda: runtime.load(case / "main.onnx"))
        for call in calls:
            outcomes.append(_outcome(call))
        for copied in (case / "dest").iterdir():  # only the artifact's own files were copied
            if copied.read_bytes() == b"SECRET":
                raise AssertionError(f"copy_artifact copied a file from outside the artifact ({copied.name})")
        if (case / "repo" / "m" / "config.pbtxt").exists():
            _check_triton_config(case / "repo" / "m" / "config.pbtxt", "m")
        return "+".join(sorted(set(outcomes)))

    def hf_config(self, rng: random.Random, case: Path) -> str:
        from aiopt.artifacts import load_model

        folder = case / "bert"
        shutil.copytree(self.hf, folder)
        config = json.loads((folder / "config.json").read_text())
        for _ in range(rng.randint(1, 2)):
            key = rng.choice(CONFIG_KEYS)
            config[key] = rng.choice(HOSTILE_VALUES + ["evilnet", "bert", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}])
        if rng.random() < 0.2:  # code shipped in the folder, named by auto_map
            config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
            config["model_type"] = rng.choice(["evilnet", "bert"])
        text = json.dumps(config).encode()
        if rng.random() < 0.15:
            text = self.mutate(text, rng)[0]
        (folder / "config.json").write_bytes(text)
        (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(self.marker)!r}).write_text('ran')\n")
        return _outcome(lambda: load_model(folder))

    def hf_tokenizer(self, rng: random.Random, case: Path) -> str:
        from aiopt.artifacts.hf import load_tokenizer

        folder = case / "bert"
        shutil.copytree(self.hf, folder)
        name = rng.choice(["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"])
        if rng.random() >= 0.2:
            if (folder / name).exists():
                (folder / name).write_bytes(self.mutate((folder / name).read_bytes(), rng)[0])
        else:
            config = json.loads((folder / "tokenizer_config.json").read_text())
            config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
            config["tokenizer_class"] = rng.choice(["EvilTokenizer", "BertTokenizer"])
            (folder / "tokenizer_config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(self.marker)!r}).write_text('ran')\n")
        return _outcome(lambda: load_tokenizer(folder))

    def hf_weights(self, rng: random.Random, case: Path) -> str:
        from aiopt.artifacts import load_model

        folder = case / "bert"
        shutil.copytree(self.hf, folder)
        weights = folder / "model.safetensors"
        choice = rng.random()
        if choice < 0.6:
            data = weights.read_bytes()
            head = rng.random() < 0.7  # most damage where the header is: the rest is tensor bytes
            part = data[:400] if head else data
            mutated = self.mutate(part, rng)[0]
            weights.write_bytes(mutated + data[400:] if head else mutated)
        elif choice < 0.75:
            weights.unlink()
            target = rng.choice([self.outside, self.outside / "nothing", self.outside / "secret.onnx"])
            weights.symlink_to(target)
        else:  # sharded: an index naming the shards
            shard = rng.choice(["model-00001.safetensors", "../outside/secret.onnx", "/etc/passwd", "", "a/b", ".x"])
            os.replace(weights, folder / "model-00001.safetensors")
            index = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": shard}}
            if rng.random() < 0.3:
                index = rng.choice(HOSTILE_VALUES)
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return _outcome(lambda: load_model(folder))

    def text(self, rng: random.Random, case: Path) -> str:
        from aiopt.text_data import load_texts

        path = case / "t.txt"
        kind = rng.choice(["lines", "huge", "bytes", "blank", "folder", "mutate", "unicode"])
        if kind == "lines":
            path.write_text("\n".join(" ".join(rng.choice(["the", "cat", "sat", "zzz", "[SEP]", "é"]) for _ in range(rng.randint(0, 40)))
                                      for _ in range(rng.randint(1, 20))))
        elif kind == "huge":
            path.write_text("short\n" + ("the cat " * rng.randint(10_000, 200_000)) + rng.choice(["", "\n", "\r\n"]))
        elif kind == "bytes":
            path.write_bytes(rng.randbytes(rng.randint(0, 4000)))
        elif kind == "blank":
            path.write_text(rng.choice(["", "\n\n", "   \n\t\n", " " * 100_000]))
        elif kind == "folder":
            path.mkdir()
        elif kind == "mutate":
            path.write_bytes(self.mutate(b"the cat sat on the mat\nthe dog ran\n", rng)[0])
        else:
            path.write_text("".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(1, 3000))).replace("\ud800", ""),
                            errors="replace")
        return _outcome(lambda: load_texts(path, self.hf, self.text_spec, seq_len=rng.choice([2, 8, 32])))

    def journal(self, rng: random.Random, case: Path) -> str:
        """A journal a crash or a full disk left: cut anywhere, or cut and appended to (what an
        older aiopt did next), or damaged within its last record."""
        import optuna

        from aiopt.optimize.study import JOURNAL, open_storage

        data = self.journal_bytes
        kind = rng.choice(["cut", "cut", "cut-garbage", "last-record", "merged"])
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        if kind == "cut":
            data = data[:rng.randrange(len(data))]
        elif kind == "cut-garbage":
            data = data[:rng.randrange(len(data))] + rng.randbytes(rng.randint(1, 64)).replace(b"\n", b"")
        elif kind == "last-record":
            data = data[:last] + self.mutate(data[last:], rng)[0]
        else:  # a torn record, then a whole one appended onto it
            data = data[:rng.randrange(last, len(data) - 1)] + data[last:]
        (case / JOURNAL).write_bytes(data)

        def load():
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):
                # as open_session does: a journal cut before its study was recorded starts a new one
                study = optuna.create_study(study_name="s", storage=open_storage(None, case), load_if_exists=True)
            return study.get_trials()

        return _outcome(load)

    def triton_name(self, rng: random.Random, case: Path) -> str:
        from aiopt.export.triton import TritonConfig, deploy_triton

        name = "".join(rng.choice(NAME_ALPHABET) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.1:
            name = rng.choice(['x"\nbackend: "python', "..", ".", "1", "a" * 200, "../outside/m"])
        outcome = _outcome(lambda: deploy_triton(self.seed_dir / "main.upto-b8.onnx", case / "repo", TritonConfig(name=name)))
        if outcome == "ok":
            _check_triton_config(case / "repo" / name / "config.pbtxt", name)
            if sorted(p.name for p in (case / "repo").iterdir()) != [name]:
                raise AssertionError(f"deploy wrote outside repo/{name!r}")
        return outcome

    def triton_tensor(self, rng: random.Random, case: Path) -> str:
        import onnx

        from aiopt.export.triton import TritonConfig, deploy_triton

        name = "".join(rng.choice(NAME_ALPHABET) for _ in range(rng.randint(1, 16)))
        onnx.save(self.model_factory(name), str(case / "t.onnx"))
        outcome = _outcome(lambda: deploy_triton(case / "t.onnx", case / "repo", TritonConfig(name="t")))
        if outcome == "ok":
            config = _check_triton_config(case / "repo" / "t" / "config.pbtxt", "t")
            if config is not None and config.input[0].name != name:
                raise AssertionError(f"tensor name {name!r} came out as {config.input[0].name!r}")
        return outcome

    def all(self) -> dict:
        return {"onnx-metadata": self.onnx_metadata, "hf-config": self.hf_config, "hf-tokenizer": self.hf_tokenizer,
                "hf-weights": self.hf_weights, "text": self.text, "journal": self.journal, "triton-name": self.triton_name,
                "triton-tensor": self.triton_tensor}


def _outcome(call) -> str:
    """"ok", or the name of aiopt's error; anything else propagates (the fuzzer's finding)."""
    from aiopt.errors import AioptError

    try:
        call()
    except AioptError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"an error of more than one line: {str(exc)[:300]!r}") from exc
        return type(exc).__name__
    return "ok"


def _poke(metadata: dict, rng: random.Random) -> None:
    """Set one hostile value somewhere a reader acts on."""
    where = rng.choice(["route", "route", "route-serving", "serving", "dispatch", "hf", "runtime", "integrity", "top"])
    routes = metadata.get("dispatch")
    if where.startswith("route") and isinstance(routes, list) and routes and isinstance(routes[0], dict):
        route = rng.choice(routes)
        if where == "route-serving":
            route["serving"] = {rng.choice(SERVING_KEYS): rng.choice(HOSTILE_VALUES)}
        elif rng.random() < 0.15:
            route.pop(rng.choice(ROUTE_KEYS), None)
        else:
            route[rng.choice(ROUTE_KEYS)] = rng.choice(HOSTILE_VALUES)
    elif where == "serving":
        metadata["serving"] = rng.choice([{rng.choice(SERVING_KEYS): rng.choice(HOSTILE_VALUES)}, rng.choice(HOSTILE_VALUES)])
    elif where == "dispatch":
        metadata["dispatch"] = rng.choice(HOSTILE_VALUES + [[{"max_batch": None, "runtime": "onnxruntime"}] * 2])
    elif where == "hf":
        metadata["hf"] = rng.choice([{"folder": rng.choice(HOSTILE_VALUES), "vocab_size": rng.choice(HOSTILE_VALUES)},
                                     rng.choice(HOSTILE_VALUES)])
    elif where == "integrity":
        metadata["integrity"] = rng.choice([{"sha256": rng.choice(HOSTILE_VALUES)}, rng.choice(HOSTILE_VALUES)])
    elif where == "runtime":
        metadata["runtime"] = rng.choice(HOSTILE_VALUES)
    else:
        metadata[rng.choice(["inputs", "outputs", "lineage", "metrics"])] = rng.choice(HOSTILE_VALUES)


def _check_triton_config(path: Path, name: str):
    """The config says what aiopt meant: one name (the one asked for), no backend smuggled in.
    Parsed with Triton's own schema where tritonclient is installed."""
    text = path.read_text()
    if any(line.startswith("backend:") and line != 'backend: "openvino"' for line in text.splitlines()):
        raise AssertionError(f"a backend line was injected into {path}")
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    if config.name != name or config.backend not in ("", "openvino"):
        raise AssertionError(f"{path} names {config.name!r} (asked {name!r}), backend {config.backend!r}")
    return config
