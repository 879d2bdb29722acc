"""CTranslate2 decoding engine for Whisper: decode an exported folder like ``generate_tokens``.

:class:`Ct2Whisper` decodes a folder made by :func:`components.ct2_export.export_ct2` (or converts a
transformers folder once through :func:`components.ct2_export.ensure_ct2`) with the same contract as
:func:`components.whisper_io.generate_tokens`: same feature extractor, same prompt (``<|startoftranscript|>``
[+ ``<|lang|>`` ``<|task|>`` for multilingual models, the language detected per clip when ``language`` is None] +
``<|notimestamps|>``), the generation config's ``suppress_tokens`` / ``begin_suppress_tokens``, length-sorted
batches, results in input order, ids without prompt and ``<|endoftext|>``.

Exactness: with ``compute_type="float32"`` greedy decoding gives the same tokens as transformers (the
teacher notes §5: 60/60 clips; the tests check it again). ``int8`` / ``int8_float32`` quantise the weights
(faster, smaller, tokens may differ). Beam search (``num_beams > 1``) uses CT2's beam search, whose stopping
rule differs from transformers': results are close but not guaranteed identical.

Fallback to transformers (the source folder's model, loaded lazily on first need): clips longer than the
model's window (30 s for Whisper, less for shortened-window students; transformers' long-form sequential
decoding) and ``return_timestamps=True`` (transformers decodes timestamped clips sequentially, seeking on after
a segment that ends mid-window, while CT2 decodes the window once: the tokens differ). Without a source
folder such calls raise ``ValueError``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.ct2_export import COMPUTE_TYPES, MANIFEST_FILE, _ctranslate2, ensure_ct2
from components.whisper_io import SAMPLE_RATE_HZ, _strip_generated

# Who runs the encoder: "torch" (the transformers model's encoder, then CT2 decodes from its output: the
# decoder sees exactly transformers' encoder states) or "ctranslate2" (CT2 end to end, no torch model needed).
# On the 2-core AMD EPYC dev machine torch's MKL encoder takes 2.05 s per 8 clips, CT2's (DNNL, AVX2; MKL or
# AVX512 forced were no better) 2.5 s at float32 and 2.2 s at int8. The encoder is ~75 % of a short clip's
# cost, so "torch" + CT2's decoder (0.54 s vs ~0.9 s for transformers per batch of 8) is the fastest exact mix.
ENCODERS = ("torch", "ctranslate2")
# ctranslate2 4.8.5's Whisper.generate returns at most ``max_length // 2`` new tokens, whatever the prompt
# length, batch size or beam size (measured; tests/data/test_ct2_runtime.py guards it). So ``max_new_tokens``
# is passed doubled, and outputs are cut to ``max_new_tokens`` in case a later version counts literally.
CT2_MAX_LENGTH_FACTOR = 2


def _language_id(language: str, lang_to_id: dict[str, int]) -> int:
    """Token id of ``language`` ("en", "english" or "<|en|>"), resolved like transformers' Whisper generate."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    lang = language.lower()
    if lang in lang_to_id:
        token = lang
    elif lang in TO_LANGUAGE_CODE:
        token = f"<|{TO_LANGUAGE_CODE[lang]}|>"
    else:
        token = f"<|{lang}|>"
    if token not in lang_to_id:
        raise ValueError(f"language {language!r} is not supported by this model (no {token} in lang_to_id)")
    return lang_to_id[token]


class Ct2Whisper:
    """A CTranslate2 Whisper with the processor and generation config of its source transformers folder.

    ``ct2_dir`` is an exported folder (:func:`~components.ct2_export.export_ct2`); ``fallback_dir`` is the
    transformers folder that decodes what CT2 does not (clips longer than the window, timestamps). It must hold
    the same model: it is not taken from the manifest, whose source folder may have changed since the export.
    ``decode_threads`` (None or 0: ``intra_threads``) runs the decoder steps on that many threads.
    """

    def __init__(
        self,
        ct2_dir: str | Path,
        compute_type: str = "float32",
        intra_threads: int | None = None,
        fallback_dir: str | Path | None = None,
        encoder: str = "ctranslate2",
        decode_threads: int | None = None,
    ):
        import torch
        from transformers import GenerationConfig, WhisperProcessor

        ctranslate2 = _ctranslate2()
        if compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type {compute_type!r} not supported (use one of {COMPUTE_TYPES})")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder {encoder!r} not supported (use one of {ENCODERS})")
        if encoder == "torch" and fallback_dir is None:
            raise ValueError(
                "encoder='torch' runs the transformers encoder: pass fallback_dir (the transformers folder)"
            )
        self.ct2_dir = Path(ct2_dir)
        if not (self.ct2_dir / "model.bin").is_file():
            raise ValueError(f"{self.ct2_dir} is not a CTranslate2 model folder (model.bin is missing)")
        manifest_file = self.ct2_dir / MANIFEST_FILE
        self.manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
        self.fallback_dir = Path(fallback_dir) if fallback_dir is not None else None
        self.compute_type = compute_type
        torch_threads = torch.get_num_threads()
        self.intra_threads = int(intra_threads or torch_threads)
        # decode_threads: the greedy decoder steps on their own thread count (a second instance of the model),
        # the encoder keeps intra_threads. A batch-1 step is a chain of tiny matrix products; on the 2-core Xeon
        # (MKL, GNU OpenMP) two threads made a step 2.7x slower than one (3.36 vs 1.23 ms), docs/decisions.md.
        # With encoder="torch" CT2 only decodes: one instance, on decode_threads.
        self.decode_threads = int(decode_threads) if decode_threads else self.intra_threads
        self.model = ctranslate2.models.Whisper(
            str(self.ct2_dir), device="cpu", compute_type=compute_type,
            intra_threads=self.decode_threads if encoder == "torch" else self.intra_threads,
        )
        self.decoder_model = self.model
        if encoder == "ctranslate2" and self.decode_threads != self.intra_threads:
            self.decoder_model = ctranslate2.models.Whisper(
                str(self.ct2_dir), device="cpu", compute_type=compute_type, intra_threads=self.decode_threads
            )
        if torch.get_num_threads() != torch_threads:  # loading set this thread's OpenMP count, torch's too:
            torch.set_num_threads(torch_threads)     # restored (CT2 keeps its own counts: measured, same speed)
        self.processor = WhisperProcessor.from_pretrained(self.ct2_dir, local_files_only=True)
        if self.processor.tokenizer.pad_token is None:
            self.processor.tokenizer.pad_token = self.processor.tokenizer.eos_token
        self.generation_config = GenerationConfig.from_pretrained(self.ct2_dir, local_files_only=True)
        self.multilingual = bool(getattr(self.generation_config, "is_multilingual", False))
        from components.vocab import IdMap, read_vocab_file

        keep = read_vocab_file(self.ct2_dir)  # a pruned vocabulary: model ids <-> the tokenizer's
        self.ids = IdMap(keep) if keep is not None else None
        self._fallback = None
        self.encoder = encoder

    @classmethod
    def from_transformers(
        cls,
        model_dir: str | Path,
        compute_type: str = "float32",
        cache_root: str | Path | None = None,
        intra_threads: int | None = None,
        encoder: str = "torch",
    ) -> Ct2Whisper:
        """Convert (once, cached) and load ``model_dir``; it also serves the fallback (and the torch encoder)."""
        ct2_dir = ensure_ct2(model_dir, compute_type, cache_root)
        return cls(ct2_dir, compute_type=compute_type, intra_threads=intra_threads, fallback_dir=model_dir,
                   encoder=encoder)

    # ------------------------------------------------------------------------------------------
    def _prompt_ids(self) -> set[int]:
        gen = self.generation_config
        ids = {gen.decoder_start_token_id, getattr(gen, "no_timestamps_token_id", None)}
        ids |= set((getattr(gen, "lang_to_id", None) or {}).values())
        ids |= set((getattr(gen, "task_to_id", None) or {}).values())
        return ids

    def _prompts(self, features, n: int, language: str | None, task: str) -> list[list[int]]:
        """Per clip: <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>, as transformers builds it."""
        gen = self.generation_config
        heads: list[list[int]] = [[gen.decoder_start_token_id] for _ in range(n)]
        if self.multilingual:
            lang_to_id = getattr(gen, "lang_to_id", None) or {}
            if language is not None:
                lang = _language_id(language, lang_to_id)
                for head in heads:
                    head.append(lang)
            elif lang_to_id:  # transformers detects the language per clip: so does CT2
                tok = self.processor.tokenizer
                for head, ranked in zip(heads, self.decoder_model.detect_language(features), strict=True):
                    head.append(int(tok.convert_tokens_to_ids(ranked[0][0])))
            task_to_id = getattr(gen, "task_to_id", None) or {}
            if task not in task_to_id:
                raise ValueError(f"task {task!r} is not supported by this model (task_to_id: {sorted(task_to_id)})")
            for head in heads:
                head.append(task_to_id[task])
        for head in heads:
            head.append(gen.no_timestamps_token_id)
        return heads

    def _fallback_decode(self, audios: list[np.ndarray], **options) -> list[tuple[list[int], str]]:
        if self.fallback_dir is None:
            window = self.processor.feature_extractor.n_samples / SAMPLE_RATE_HZ
            raise ValueError(
                f"clips longer than the {window:.0f} s window and return_timestamps=True are decoded by "
                "transformers, but this CT2 model has no source folder: pass fallback_dir (the transformers "
                "folder) or use engine=transformers"
            )
        from components.whisper_io import generate_tokens

        model, processor = self._transformers()
        return generate_tokens(model, processor, audios, **options)

    def _transformers(self):
        """The fallback ``(model, processor)``, loaded on first use."""
        from components.vocab import apply_vocab_file
        from components.whisper_io import load_whisper

        if self._fallback is None:
            model, processor = load_whisper(self.fallback_dir)
            apply_vocab_file(model, self.fallback_dir)  # a student trained on a kept vocabulary decodes only it
            self._fallback = model, processor
        return self._fallback

    def _encode(self, feats: np.ndarray):
        """Encoder states of a feature batch, as a CT2 StorageView (``generate`` accepts them in place of mels)."""
        import torch

        ctranslate2 = _ctranslate2()
        if self.encoder == "ctranslate2":
            mels = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32))
            # one instance: generate encodes; two: the encoder's instance encodes, the decoder's generates
            return mels if self.decoder_model is self.model else self.model.encode(mels)
        model, _ = self._transformers()
        with torch.inference_mode():
            states = model.model.encoder(torch.from_numpy(feats).to(model.device, model.dtype)).last_hidden_state
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(states.float().cpu().numpy()))

    def generate_ids(self, features, prompts: list[list[int]], suppress: list[int], **options) -> list[list[int]]:
        """CT2 ``generate``, token ids in the tokenizer's numbering (a pruned vocabulary is mapped both ways)."""
        if self.ids is not None:
            prompts, suppress = [self.ids.to_model(p) for p in prompts], self.ids.to_model(suppress)
        out = self.decoder_model.generate(features, prompts, suppress_tokens=suppress, **options)
        seqs = [[int(t) for t in res.sequences_ids[0]] for res in out]
        return [self.ids.from_model(seq) for seq in seqs] if self.ids is not None else seqs

    def generate_tokens(
        self,
        audios: Sequence[np.ndarray],
        batch_size: int = 8,
        num_beams: int = 1,
        max_new_tokens: int = 128,
        language: str | None = None,
        task: str = "transcribe",
        return_timestamps: bool = False,
    ) -> list[tuple[list[int], str]]:
        """``(token_ids, text)`` per clip, in input order: the contract of ``whisper_io.generate_tokens``.

        Clips within the window are decoded one window each, as transformers does for a batch without long
        clips (transformers switches a whole batch to long-form decoding when one clip in it is too long).
        """
        if not audios:
            return []
        fe, tok, gen = self.processor.feature_extractor, self.processor.tokenizer, self.generation_config
        window_samples = int(fe.n_samples)
        arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
        results: list[tuple[list[int], str]] = [([], "")] * len(arrays)
        # timestamps: transformers' Whisper generate decodes timestamped clips sequentially (seeking on after
        # a segment that ends mid-window), CT2 decodes one window: not the same tokens, so transformers does it
        fallback_idx = [i for i, a in enumerate(arrays) if return_timestamps or len(a) > window_samples]
        if fallback_idx:
            decoded = self._fallback_decode(
                [arrays[i] for i in fallback_idx], batch_size=batch_size, num_beams=num_beams,
                max_new_tokens=max_new_tokens, language=language, task=task, return_timestamps=return_timestamps,
            )
            for i, out in zip(fallback_idx, decoded, strict=True):
                results[i] = out
        eot_id = tok.convert_tokens_to_ids("<|endoftext|>")
        prompt_ids = self._prompt_ids()
        suppress = [int(t) for t in (getattr(gen, "suppress_tokens", None) or [])]
        # CT2's suppress_blank suppresses the model config's suppress_ids_begin (copied from this generation
        # config at export) at the first step: transformers' begin_suppress_tokens.
        suppress_blank = bool(getattr(gen, "begin_suppress_tokens", None))
        fallback_set = set(fallback_idx)
        short = [i for i in range(len(arrays)) if i not in fallback_set]
        order = sorted(short, key=lambda i: len(arrays[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = fe([arrays[i] for i in idx], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np").input_features
            features = self._encode(np.ascontiguousarray(feats, dtype=np.float32))
            prompts = self._prompts(features, len(idx), language, task)
            out = self.generate_ids(features, prompts, suppress, beam_size=num_beams, num_hypotheses=1,
                                    max_length=CT2_MAX_LENGTH_FACTOR * max_new_tokens, suppress_blank=suppress_blank,
                                    sampling_topk=1)
            for i, seq in zip(idx, out, strict=True):
                ids = _strip_generated(seq[:max_new_tokens], eot_id, prompt_ids)
                results[i] = (ids, tok.decode(ids, skip_special_tokens=True).strip())
        return results

    def transcribe(self, audios: Sequence[np.ndarray], **options) -> list[str]:
        return [text for _, text in self.generate_tokens(audios, **options)]
