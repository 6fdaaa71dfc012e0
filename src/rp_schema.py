"""Request contract of the worker: fields, defaults, ENV aliases, validation.

Every option is resolved in one order, whatever the field:

1. the request (``job["input"]``), when the key is present;
2. the environment, first alias that is set and non-empty;
3. the default declared here.

For nullable fields an explicit JSON ``null`` in the request means ``None``
and wins over the environment. For non-nullable fields ``null`` (and a blank
string) means "not given", because many clients send nulls or empty strings
for blank form fields.

After typing, every range, choice and cross-field rule is checked on the final
value whatever its source: runpod's ``rp_validator`` skips constraints when a
value has the default's type, so it is deliberately not used.

Each field is declared once, as a field of :class:`RequestOptions` whose
metadata carries its rules (:func:`_option`); the field's type and whether it
is nullable come from its annotation. The worker reads the ENV side once at
start-up (:func:`read_request_env`, kept in ``settings.WorkerSettings``); a bad
ENV value is reported by each request that falls back to it, naming the
variable, so a request that sets the field itself is still served.

Only the standard library, :mod:`languages`, :mod:`request_rules`, :mod:`scalar_text` and
:mod:`safe_values` are imported so the module
loads in milliseconds (no torch, no whisperx).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final

from languages import WHISPER_LANGUAGE_CODES
from request_rules import ValidationError as ValidationError  # re-exported: callers know it from here
from request_rules import check_audio_source as _check_audio_source
from request_rules import check_known_speakers as _check_known_speakers
from request_rules import check_response_shape as _check_response_shape
from request_rules import check_speakers as _check_speakers
from request_rules import origin as _origin
from scalar_text import NULL_WORDS
from scalar_text import parse_scalar as parse_scalar  # re-exported: the door and settings parse with it
from safe_values import REDACTED as REDACTED  # re-exported: callers know it from here
from safe_values import json_safe as json_safe  # re-exported: the handler renders answers with it
from safe_values import redact_url as _redact_url
from safe_values import short as _short

logger = logging.getLogger(__name__)



# How a string value is tidied before checks: identifiers and paths lose
# surrounding whitespace (copy-paste artefacts), choice-like values are also
# lower-cased, free text (prompts, base64) is left untouched.
_KEEP, _STRIP, _LOWER = "keep", "strip", "lower"


@dataclass(frozen=True)
class _Rules:
    """How one request field is read and checked (everything but its name, type, default)."""

    help: str
    env: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple[str, ...] | None = None
    # Wording used instead of listing ``choices`` (100 language codes).
    choices_label: str | None = None
    # Extra request keys accepted for this field (e.g. "diarize").
    aliases: tuple[str, ...] = ()
    normalize: str = _STRIP
    # Secrets are never echoed back in error messages or to_dict().
    secret: bool = False
    # Several of ``choices`` at once: a JSON list or a comma-separated string, kept as one
    # comma-joined string in the order of ``choices`` (OpenAI's ``timestamp_granularities[]``).
    many: bool = False
    # For list fields (``tuple[str, ...]``): the most items a request may give.
    max_items: int | None = None


_RULES_KEY: Final = "request_field"

#: OpenAI's ``response_format`` values of ``/v1/audio/transcriptions``.
RESPONSE_FORMATS: Final = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
#: Most known speakers one request may name (OpenAI's limit for ``known_speaker_names[]``).
MAX_KNOWN_SPEAKERS: Final = 4
#: OpenAI's ``timestamp_granularities[]`` values.
TIMESTAMP_GRANULARITIES: Final = ("word", "segment")


def _option(default: Any, help: str, **rules: Any) -> Any:
    """Declare a request field: its default and its :class:`_Rules` (help, ENV aliases, range...)."""
    return field(default=default, metadata={_RULES_KEY: _Rules(help=help, **rules)})


@dataclass(frozen=True)
class _Spec:
    """One request field as resolution sees it: name, scalar type, default and rules."""

    name: str
    type: type
    default: Any
    nullable: bool
    rules: _Rules


@dataclass(frozen=True, repr=False)
class RequestOptions:
    """Fully resolved and validated options of one job; each field declared here once.

    Build it with :func:`resolve_options`; direct construction (e.g. in tests)
    skips validation. Durations are in seconds; probabilities in [0, 1].
    ``sources`` maps each field to ``"request"``, ``"env:NAME"`` or
    ``"default"``.
    """

    # --- audio source -----------------------------------------------------
    audio_file: str | None = _option(
        None, "URL of the audio to transcribe (or a local path where the worker allows it). Required unless audio_base64 is given."
    )
    audio_base64: str | None = _option(
        None, "Base64-encoded audio, for clients that cannot host a file. Mutually exclusive with audio_file.", normalize=_KEEP
    )
    audio_filename: str | None = _option(None, "Optional file name hint (extension) for audio_base64.")
    # --- model ------------------------------------------------------------
    model: str = _option("faster-whisper-large-v3-russian", "Whisper model name, Hub id or local path /models/<model>.", env=("MODEL",))
    # No ENV alias on purpose: LANGUAGE is a standard POSIX locale variable and
    # would silently force a language.
    language: str | None = _option(
        None,
        "ISO language code; null = auto-detect.",
        normalize=_LOWER,
        choices=WHISPER_LANGUAGE_CODES,
        choices_label="a Whisper language code (e.g. en, ru, de)",
    )
    compute_type: str = _option(
        "float16", "CTranslate2 compute type.", env=("COMPUTE_TYPE",), normalize=_LOWER, choices=("float16", "int8", "float32")
    )
    # --- decoding ---------------------------------------------------------
    batch_size: int = _option(32, "Number of VAD chunks decoded in parallel.", env=("BATCH_SIZE",), min=1, max=256)
    beam_size: int = _option(5, "Beam search width.", env=("BEAM_SIZE",), min=1, max=20)
    temperature: float = _option(0.0, "Initial sampling temperature (0 = greedy/beam search).", env=("TEMPERATURE",), min=0.0, max=1.0)
    temperature_increment_on_fallback: float | None = _option(
        0.2,
        "Temperature step when a decode fails the thresholds; null or 0 = no fallback.",
        env=("TEMPERATURE_INCREMENT_ON_FALLBACK",),
        min=0.0,
        max=1.0,
    )
    # --- VAD --------------------------------------------------------------
    vad_onset: float = _option(
        0.300,
        "VAD probability above which speech starts (0..1 exclusive).",
        env=("VAD_ONSET",),
        min=0.0,
        max=1.0,
        min_exclusive=True,
        max_exclusive=True,
    )
    vad_offset: float = _option(
        0.250,
        "VAD probability below which speech ends (0..1 exclusive).",
        env=("VAD_OFFSET",),
        min=0.0,
        max=1.0,
        min_exclusive=True,
        max_exclusive=True,
    )
    min_duration_on: float = _option(0.08, "Shortest speech region kept by VAD, seconds.", env=("MIN_DURATION_ON",), min=0.0)
    min_duration_off: float = _option(0.08, "Shortest silence that splits speech regions, seconds.", env=("MIN_DURATION_OFF",), min=0.0)
    pad_onset: float = _option(0.0, "Padding added before each speech region, seconds.", env=("PAD_ONSET",), min=0.0, max=10.0)
    pad_offset: float = _option(0.0, "Padding added after each speech region, seconds.", env=("PAD_OFFSET",), min=0.0, max=10.0)
    # --- post-processing --------------------------------------------------
    align_output: bool = _option(True, "Word-level alignment with a wav2vec2 model.", env=("ALIGN_OUTPUT",))
    diarization: bool = _option(
        True, "Speaker diarization with pyannote (request alias: diarize).", env=("DIARIZATION", "DIARIZE"), aliases=("diarize",)
    )
    diarization_model: str = _option(
        "pyannote/speaker-diarization-3.1", "pyannote pipeline: Hub id or local directory.", env=("DIARIZATION_MODEL",)
    )
    huggingface_access_token: str | None = _option(
        None, "Hugging Face token for gated pyannote models.", secret=True, env=("HUGGINGFACE_ACCESS_TOKEN", "HF_TOKEN")
    )
    min_speakers: int | None = _option(None, "Lower bound on the number of speakers.", env=("MIN_SPEAKERS",), min=1)
    max_speakers: int | None = _option(None, "Upper bound on the number of speakers.", env=("MAX_SPEAKERS",), min=1)
    num_speakers: int | None = _option(None, "Exact number of speakers, when known.", min=1)
    # --- ASR thresholds ---------------------------------------------------
    length_penalty: float = _option(
        1.1, "Beam search length penalty exponent.", env=("LENGTH_PENALTY",), min=0.0, max=10.0, min_exclusive=True
    )
    no_speech_threshold: float | None = _option(
        0.6, "Skip a window whose no-speech probability exceeds this.", env=("NO_SPEECH_THRESHOLD",), min=0.0, max=1.0
    )
    log_prob_threshold: float | None = _option(
        -1.0, "Retry/skip when the average log probability is below this.", env=("LOG_PROB_THRESHOLD", "LOGPROB_THRESHOLD"), max=0.0
    )
    compression_ratio_threshold: float | None = _option(
        2.4, "Retry when the gzip compression ratio exceeds this.", env=("COMPRESSION_RATIO_THRESHOLD",), min=0.0, min_exclusive=True
    )
    language_detection_min_prob: float = _option(
        0.5, "Minimum probability to accept a detected language.", env=("LANGUAGE_DETECTION_MIN_PROB",), min=0.0, max=1.0
    )
    language_detection_max_tries: int = _option(
        3, "Audio windows tried before giving up on detection.", env=("LANGUAGE_DETECTION_MAX_TRIES",), min=1, max=20
    )
    # --- output -----------------------------------------------------------
    output_format: str = _option(
        "json", "Format of the transcript returned.", env=("OUTPUT_FORMAT",), normalize=_LOWER, choices=("json", "srt", "vtt", "txt", "tsv")
    )
    debug: bool = _option(False, "Add timings and a debug_info object to the response.", env=("DEBUG",))
    response_format: str | None = _option(
        None, "Answer in OpenAI's transcription shape instead of this worker's (openai_shapes.py).",
        normalize=_LOWER, choices=RESPONSE_FORMATS,
    )
    timestamp_granularities: str | None = _option(
        None, "With response_format verbose_json: word and/or segment times (default: segment).",
        normalize=_LOWER, choices=TIMESTAMP_GRANULARITIES, many=True, aliases=("timestamp_granularities[]",),
    )
    # --- decoding extras --------------------------------------------------
    initial_prompt: str | None = _option(None, "Text that conditions the first window (vocabulary, style).", normalize=_KEEP)
    hotwords: str | None = _option(None, "Words to bias decoding towards.", normalize=_KEEP)
    suppress_numerals: bool = _option(False, "Spell numbers out as words instead of digits.")
    task: str = _option("transcribe", "transcribe, or translate into English.", normalize=_LOWER, choices=("transcribe", "translate"))
    return_speaker_embeddings: bool = _option(False, "Return one embedding vector per diarized speaker.")
    # --- known speakers (OpenAI's known_speaker_names[] / known_speaker_references[]) ----------
    known_speaker_names: tuple[str, ...] | None = _option(
        None, "Names for the speakers of known_speaker_references, in the same order (at most 4).",
        aliases=("known_speaker_names[]",), max_items=MAX_KNOWN_SPEAKERS,
    )
    known_speaker_references: tuple[str, ...] | None = _option(
        None, "A 2-10 s sample of each known speaker: a data URL, base64 or an http(s) link (known_speakers.py).",
        aliases=("known_speaker_references[]",), normalize=_KEEP, max_items=MAX_KNOWN_SPEAKERS,
    )
    known_speaker_min_similarity: float = _option(
        0.6, "Cosine similarity a known speaker's sample needs with a diarized speaker to name it "
        "(measured by bench/known_speakers.py).", env=("KNOWN_SPEAKER_MIN_SIMILARITY",), min=-1.0, max=1.0,
    )
    # Excluded from eq/hash: provenance is not part of the option values.
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Return the option values as a JSON-native dict (no ``sources``).

        With ``redact`` (the default, for logs and debug output) the HF token
        becomes ``"***"``, base64 audio is replaced by its length and
        credentials in the audio URL (user info, query string, which is where
        presigned URLs carry their signature) are masked.
        """
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        if redact:
            if data["huggingface_access_token"] is not None:
                data["huggingface_access_token"] = REDACTED
            if data["audio_base64"] is not None:
                data["audio_base64"] = f"<base64, {len(data['audio_base64'])} chars>"
            if data["audio_file"] is not None:
                data["audio_file"] = _redact_url(data["audio_file"])
            if data["known_speaker_references"] is not None:
                data["known_speaker_references"] = [_shown_reference(ref) for ref in data["known_speaker_references"]]
        return data

    def __repr__(self) -> str:
        """Show redacted values only, so a stray log of the object is safe; long free text
        (prompts) is shortened so one request cannot flood the container log."""
        body = ", ".join(f"{k}={_short(v)!r}" for k, v in self.to_dict(redact=True).items())
        return f"RequestOptions({body})"


def _shown_reference(reference: str) -> str:
    """A known speaker's sample as logs and debug output show it: a link without its credentials,
    inline audio by its length only."""
    if reference[:8].lower().startswith(("http://", "https://")):
        return _redact_url(reference)
    return f"<inline audio, {len(reference)} chars>"


def _spec_of(option: Field[Any], annotation: Any) -> _Spec:
    """The :class:`_Spec` of one declared field: ``X | None`` makes it nullable of type X;
    ``tuple[str, ...]`` is a list of strings (type ``tuple``)."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    scalar = [member for member in members if member is not type(None)]
    assert len(scalar) == 1, f"{option.name}: one scalar type expected, got {annotation!r}"
    kind = tuple if typing.get_origin(scalar[0]) is tuple else scalar[0]
    return _Spec(option.name, kind, option.default, len(scalar) < len(members), option.metadata[_RULES_KEY])


_HINTS: Final = typing.get_type_hints(RequestOptions)
_SPECS: Final[tuple[_Spec, ...]] = tuple(
    _spec_of(option, _HINTS[option.name]) for option in fields(RequestOptions) if _RULES_KEY in option.metadata
)
_SPEC_BY_NAME: Final[Mapping[str, _Spec]] = MappingProxyType({spec.name: spec for spec in _SPECS})
_ALIAS_TO_FIELD: Final[Mapping[str, str]] = MappingProxyType({alias: spec.name for spec in _SPECS for alias in spec.rules.aliases})


def _schema_entry(spec: _Spec) -> dict[str, Any]:
    """Describe one field as a plain dict (the public INPUT_SCHEMA form)."""
    rules = spec.rules
    entry: dict[str, Any] = {
        "type": spec.type,
        "default": spec.default,
        "env": rules.env,
        "nullable": spec.nullable,
        "help": rules.help,
    }
    if rules.min is not None:
        entry["min"] = rules.min
        entry["min_exclusive"] = rules.min_exclusive
    if rules.max is not None:
        entry["max"] = rules.max
        entry["max_exclusive"] = rules.max_exclusive
    if rules.choices is not None:
        entry["choices"] = rules.choices
    if rules.aliases:
        entry["aliases"] = rules.aliases
    if rules.max_items is not None:
        entry["max_items"] = rules.max_items
    return entry


#: Field name -> {type, default, env, nullable, help[, min, min_exclusive,
#: max, max_exclusive, choices, aliases]}. ``env`` lists ENV names, first wins.
INPUT_SCHEMA: Final[dict[str, dict[str, Any]]] = {spec.name: _schema_entry(spec) for spec in _SPECS}


def env_aliases() -> dict[str, tuple[str, ...]]:
    """Return field -> ENV names (first wins) for fields that have any."""
    return {spec.name: spec.rules.env for spec in _SPECS if spec.rules.env}


def defaults() -> dict[str, Any]:
    """Return field -> default value for every request field."""
    return {spec.name: spec.default for spec in _SPECS}


# ---------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _EnvEntry:
    """The ENV side of one field, read once: the winning variable and what it gives."""

    name: str
    text: str
    value: Any = None
    # Why the value cannot be used: raised, as a new ValidationError, by each request that falls
    # back to this variable (a request that sets the field itself is served).
    error: str | None = None
    # Other aliases set to a different value, as (name, text): ignored, and said so when the value is used.
    shadowed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RequestEnv:
    """The request fields' ENV values, parsed and checked once (:func:`read_request_env`)."""

    entries: Mapping[str, _EnvEntry] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        """Which variable each field falls back to, never its value: one of them holds a token."""
        body = ", ".join(f"{name}={entry.name}" for name, entry in self.entries.items())
        return f"RequestEnv({body})"

    def text(self, field_name: str) -> str | None:
        """The winning ENV text of ``field_name`` (stripped), or None when no alias is set."""
        entry = self.entries.get(field_name)
        return None if entry is None else entry.text

    def texts(self, field_name: str) -> list[str]:
        """Every alias of ``field_name`` that is set, winner first (stripped texts)."""
        entry = self.entries.get(field_name)
        return [] if entry is None else [entry.text, *(text for _, text in entry.shadowed)]


def read_request_env(environ: Mapping[str, str]) -> RequestEnv:
    """Read, parse and check the ENV aliases of every request field (at start-up)."""
    entries: dict[str, _EnvEntry] = {}
    for spec in _SPECS:
        found = _env_value(spec, environ)
        if found is None:
            continue
        env_name, text, shadowed = found
        try:
            value = _parse_env(spec, env_name, text)
            if value is not None:
                _check_constraints(spec, value, f"env:{env_name}")
        except ValidationError as exc:
            entries[spec.name] = _EnvEntry(env_name, text, error=str(exc), shadowed=shadowed)
        else:
            entries[spec.name] = _EnvEntry(env_name, text, value, shadowed=shadowed)
    return RequestEnv(MappingProxyType(entries))


def resolve_options(job_input: Mapping[str, Any], environ: RequestEnv | Mapping[str, str] | None = None) -> RequestOptions:
    """Resolve request -> ENV -> default for every field and validate.

    ``environ`` is the worker's :class:`RequestEnv`, read once at start-up; a
    plain mapping (or None: :data:`os.environ` at call time) is read here, for
    callers outside the worker. Raises :class:`ValidationError` with a message
    naming the field (and the ENV variable, for ENV problems) on the first
    problem found.
    """
    if not isinstance(job_input, Mapping):
        raise ValidationError("input must be a JSON object")
    if isinstance(environ, RequestEnv):
        env = environ
    else:
        env = read_request_env(os.environ if environ is None else environ)
    _check_unknown_keys(job_input)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in _SPECS:
        values[spec.name], sources[spec.name] = _resolve_field(spec, job_input, env)

    _check_audio_source(values)
    _check_speakers(values, sources)
    _check_response_shape(values, sources)
    _check_known_speakers(values, sources)
    return RequestOptions(**values, sources=MappingProxyType(sources))


#: How many unknown field names an error lists (a request may send thousands).
MAX_LISTED_UNKNOWN_KEYS: Final = 20
_MAX_SHOWN_KEY_CHARS: Final = 64


def _shown_key(key: Any) -> str:
    """A request key as an error message shows it: plain when it is printable text, else escaped
    (``ascii()``: lone surrogates, control characters), shortened when long."""
    text = key if isinstance(key, str) else repr(key)
    if not (text.isprintable() and _invalid_character(text) is None):
        text = ascii(text)
    return text if len(text) <= _MAX_SHOWN_KEY_CHARS else text[: _MAX_SHOWN_KEY_CHARS - 3] + "..."


def _check_unknown_keys(job_input: Mapping[Any, Any]) -> None:
    """Reject keys that are neither a field nor a request alias, all at once."""
    unknown = sorted(_shown_key(key) for key in job_input if key not in _SPEC_BY_NAME and key not in _ALIAS_TO_FIELD)
    if unknown:
        listed = ", ".join(unknown[:MAX_LISTED_UNKNOWN_KEYS])
        more = len(unknown) - MAX_LISTED_UNKNOWN_KEYS
        raise ValidationError(f"unknown input field(s): {listed}" + (f" and {more} more" if more > 0 else ""))


def _resolve_field(spec: _Spec, job_input: Mapping[str, Any], env: RequestEnv) -> tuple[Any, str]:
    """Return (validated value, source) for one field."""
    given, raw, key = _request_value(spec, job_input)
    if given:
        value = None if raw is None else _coerce_request(spec, raw, key)
        if value is not None:
            _check_constraints(spec, value, "request")
        return value, "request"
    entry = env.entries.get(spec.name)
    if entry is None:
        if spec.default is not None:
            _check_constraints(spec, spec.default, "default")
        return spec.default, "default"
    for shadowed, _ in entry.shadowed:
        # Values are not logged: one of these aliases holds a token.
        logger.warning(
            "ENV %s is ignored for %s because %s is also set and wins",
            shadowed,
            spec.name,
            entry.name,
        )
    if entry.error is not None:
        raise ValidationError(entry.error, spec.name)
    return entry.value, f"env:{entry.name}"


def _is_blank(value: Any) -> bool:
    """True for None and whitespace-only strings (blank form fields)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _request_value(spec: _Spec, job_input: Mapping[str, Any]) -> tuple[bool, Any, str]:
    """Return (given, raw value, key used) from the request, honouring aliases.

    A blank value counts as an explicit ``None`` for nullable fields and as
    "not given" for the others. Two keys for one field must agree.
    """
    keys = [key for key in (spec.name, *spec.rules.aliases) if key in job_input]
    present = [key for key in keys if not _is_blank(job_input[key])]
    if len(present) > 1:
        typed = {key: _coerce_request(spec, job_input[key], key) for key in present}
        if len(set(typed.values())) > 1:
            shown = " and ".join(f"{key}={json.dumps(typed[key])}" for key in present)
            raise ValidationError(
                f"{shown} disagree; give only one of {' / '.join(present)}",
                spec.name,
            )
    if present:
        return True, job_input[present[0]], present[0]
    if keys and spec.nullable:
        return True, None, keys[0]
    return False, None, spec.name


def _env_value(spec: _Spec, env: Mapping[str, str]) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    """Return (ENV name, stripped text, shadowed aliases) of the first alias set and non-empty.

    Shadowed aliases are the later ones set to a different text, as (name, text).
    """
    set_names = [name for name in spec.rules.env if env.get(name, "").strip()]
    if not set_names:
        return None
    winner = set_names[0]
    text = env[winner].strip()
    shadowed = tuple((name, env[name].strip()) for name in set_names[1:] if env[name].strip() != text)
    return winner, text, shadowed


def _describe(spec: _Spec, value: Any) -> str:
    """Describe a bad value for an error message without leaking secrets."""
    kind = "null" if value is None else type(value).__name__
    if spec.rules.secret:
        return f"a value of type {kind}"
    text = repr(value)
    if len(text) > 60:  # base64 blobs and prompts can be megabytes long
        text = text[:57] + "..."
    return f"{kind} {text}"


def _coerce_request(spec: _Spec, value: Any, key: str | None = None) -> Any:
    """Type-check a non-null request value strictly and convert it.

    JSON has one number type, so integral floats (4.0) are accepted for int
    fields and ints for float fields; bools are never numbers here.
    """
    key = key or spec.name
    expected = {bool: "a JSON boolean (true/false)", int: "an integer",
                float: "a number", str: "a string", tuple: "a list of strings"}[spec.type]  # fmt: skip
    problem = ValidationError(f"{key} must be {expected} (got {_describe(spec, value)})", spec.name)
    if spec.type is tuple:
        items = [value] if isinstance(value, str) else value  # one item may come as a plain string
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise problem
        for item in items:
            _check_characters(spec, item, key)
        return tuple(_normalize(spec, item) for item in items)
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        raise problem
    if spec.type is str:
        if spec.rules.many and isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = ",".join(value)
        if isinstance(value, str):
            _check_characters(spec, value, key)
            return _normalize(spec, value)
        if spec.rules.many:
            raise ValidationError(f"{key} must be a list of strings or a comma-separated string "
                                  f"(got {_describe(spec, value)})", spec.name)
        raise problem
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    if spec.type is int:
        if isinstance(value, int):
            return value
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise problem
    return _finite_float(spec, value, key)


_INVALID_CHARACTER: Final = re.compile(r"[\x00\ud800-\udfff]")


def _invalid_character(text: str) -> str | None:
    """Describe the first character of ``text`` no transcript may hold ("NUL U+0000", "lone
    surrogate U+D800"), or None. A JSON body can carry both (``"\\u0000"``, ``"\\ud800"``); a lone
    surrogate cannot even be encoded as UTF-8, so it breaks every consumer downstream."""
    found = _INVALID_CHARACTER.search(text)
    if found is None:
        return None
    char = found.group()
    return "NUL U+0000" if char == "\x00" else f"lone surrogate U+{ord(char):04X}"


def _check_characters(spec: _Spec, text: str, key: str) -> None:
    """Refuse a string holding a NUL or a lone surrogate, naming the field."""
    found = _invalid_character(text)
    if found is not None:
        raise ValidationError(f"{key}: contains an invalid character ({found})", spec.name)


def _finite_float(spec: _Spec, value: int | float, where: str) -> float:
    """Convert to float, rejecting NaN, infinities and ints too big for float."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValidationError(f"{where} must be a finite number (got {value!r})", spec.name)
    return number


def _normalize(spec: _Spec, text: str) -> str:
    """Tidy a string value according to the field's normalisation rule."""
    if spec.rules.many:
        # Each item tidied, duplicates dropped; known items in the order of ``choices`` (so equal
        # sets compare equal), unknown ones after them for the choices check to name.
        items = dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip())
        known = [choice for choice in spec.rules.choices or () if choice in items]
        return ",".join(known + [item for item in items if item not in known])
    if spec.rules.normalize == _LOWER:
        return text.strip().lower()
    if spec.rules.normalize == _STRIP:
        return text.strip()
    return text


def _parse_env(spec: _Spec, env_name: str, text: str) -> Any:
    """Parse an ENV string into the field's type or raise ValidationError."""
    if spec.nullable and text.lower() in NULL_WORDS:
        return None
    if spec.type is str:
        # os.environ holds undecodable bytes as lone surrogates.
        _check_characters(spec, text, f"environment variable {env_name}")
        return _normalize(spec, text)
    parsed = parse_scalar(spec.type, text)
    if parsed is None:
        expected = {
            bool: "a boolean (true/false/1/0/yes/no/on/off)",
            int: "an integer",
            float: "a number",
        }[spec.type]
        shown = "<hidden>" if spec.rules.secret else repr(text)
        raise ValidationError(
            f"environment variable {env_name}={shown} is not valid for {spec.name}: expected {expected}",
            spec.name,
        )
    return parsed


def _check_constraints(spec: _Spec, value: Any, source: str) -> None:
    """Enforce choices, numeric ranges and list lengths on a typed, non-null value."""
    if spec.type is tuple:
        if not value or any(not item for item in value):
            raise ValidationError(f"{spec.name} must be a list of non-empty strings{_origin(source)}", spec.name)
        if spec.rules.max_items is not None and len(value) > spec.rules.max_items:
            raise ValidationError(f"{spec.name} holds {len(value)} items, more than the {spec.rules.max_items} "
                                  f"allowed{_origin(source)}", spec.name)
        return
    if spec.rules.many:
        if not value:
            raise ValidationError(f"{spec.name} needs at least one of {', '.join(spec.rules.choices or ())}"
                                  f"{_origin(source)}", spec.name)
        for item in value.split(","):
            _check_constraints(_Spec(spec.name, str, None, True, replace(spec.rules, many=False)), item, source)
        return
    if spec.rules.choices is not None and value not in spec.rules.choices:
        if spec.rules.choices_label:
            message = f"{spec.name} {value!r}{_origin(source)} is not {spec.rules.choices_label}"
        else:
            message = f"{spec.name} must be one of {', '.join(spec.rules.choices)} (got {value!r}{_origin(source)})"
        raise ValidationError(message, spec.name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    too_low = spec.rules.min is not None and (value <= spec.rules.min if spec.rules.min_exclusive else value < spec.rules.min)
    too_high = spec.rules.max is not None and (value >= spec.rules.max if spec.rules.max_exclusive else value > spec.rules.max)
    if too_low or too_high:
        raise ValidationError(
            f"{spec.name} must be {_range_text(spec)} (got {value!r}{_origin(source)})",
            spec.name,
        )


def _range_text(spec: _Spec) -> str:
    """Describe a field's allowed range, e.g. '> 0 and < 1'."""
    parts = []
    if spec.rules.min is not None:
        parts.append(f"{'>' if spec.rules.min_exclusive else '>='} {spec.rules.min:g}")
    if spec.rules.max is not None:
        parts.append(f"{'<' if spec.rules.max_exclusive else '<='} {spec.rules.max:g}")
    return " and ".join(parts)
