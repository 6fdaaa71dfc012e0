"""Language codes understood by Whisper (multilingual models).

Kept as plain data so that request validation can check ``language`` without
importing faster-whisper, whisperx or torch (the schema must import in
milliseconds).
"""

from __future__ import annotations

from typing import Final

# Ordered as in Whisper's tokenizer (roughly by amount of training data);
# "yue" (Cantonese) was added with large-v3, which is why it comes last.
WHISPER_LANGUAGE_CODES: Final[tuple[str, ...]] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr",
    "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi", "vi",
    "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no",
    "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk",
    "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk",
    "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw",
    "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc",
    "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl",
    "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
)  # fmt: skip
