"""Query and document prompt formats, pinned per family and colpali-engine version.

colpali-engine changed its prompts between releases (checked against the
released wheels 0.3.1, 0.3.8, 0.3.10, 0.3.11, 0.3.12 and 0.3.18):

=========  ==========================================================================
era        what the library did
=========  ==========================================================================
``0.3.10`` (0.3.1 – 0.3.10) queries ``"Query: " + q + 10 x augmentation token``;
           ColPali ``"<bos>Query: " + q + 10 x <pad> + "\\n"``; ColIdefics3 adds a
           trailing ``"\\n"``; BiQwen2.5 one augmentation token only; ColIdefics3
           image prompt ``"<|im_start|>user\\n<image>Describe the image.<end_of_utterance>"``.
``0.3.11`` one ``process_queries`` for all: ``"Query: " + q + 10 x augmentation``
           (ColPali: ``"<bos>" +`` that); BiQwen2.5 now 10 tokens too; ColIdefics3
           image prompt ``"<|im_start|>User:<image>Describe the image.<end_of_utterance>\\nAssistant:"``.
``0.3.12`` (0.3.12 – at least 0.3.18) the ``"Query: "`` prefix is gone:
           ``q + 10 x augmentation`` (ColPali ``"<bos>" + q + 10 x <pad>``).
=========  ==========================================================================

Augmentation tokens: Qwen families ``<|endoftext|>``, ColIdefics3
``<end_of_utterance>``, ColPali the tokenizer's pad token (``<pad>``).
Image prompts of the Qwen families and ColPali did not change (from 0.3.8 on).

pgmaxsim builds the query strings itself from these pinned formats and calls
the processor's tokenizer exactly as that library version did, so an index
keeps one format for its lifetime: its recorded ``prompt_format`` (e.g.
``"colqwen2_5@0.3.12"``) is reapplied to queries whatever colpali-engine is
installed later. The default for a new index is the era of the installed
colpali-engine.

Text *documents* (not queries) are passed as they are, with no prefix or
augmentation (as colpali-engine's ``process_texts``), except ColPali's
``<bos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PgmaxsimError

ERAS = ("0.3.10", "0.3.11", "0.3.12")

QWEN_IMAGE_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
)
PALI_IMAGE_PROMPT = "<image><bos>Describe the image."
IDEFICS_IMAGE_PROMPT_OLD = "<|im_start|>user\n<image>Describe the image.<end_of_utterance>"
IDEFICS_IMAGE_PROMPT = "<|im_start|>User:<image>Describe the image.<end_of_utterance>\nAssistant:"

AUGMENTATION = {
    "colqwen2_5": "<|endoftext|>",
    "colqwen2": "<|endoftext|>",
    "biqwen2_5": "<|endoftext|>",
    "colidefics3": "<end_of_utterance>",
    "colpali": "{pad}",  # the tokenizer's pad token
}


@dataclass(frozen=True)
class PromptFormat:
    """How one family formats queries and document images in one era."""

    family: str
    era: str
    query_prefix: str
    augmentation: str
    n_augmentation: int
    query_tail: str
    image_prompt: str
    bos_prefix: bool  # ColPali: "<bos>" in front of every text

    @property
    def name(self) -> str:
        return f"{self.family}@{self.era}"

    def query(self, text: str, *, bos: str = "", pad: str = "") -> str:
        """The query string handed to the tokenizer."""
        aug = self.augmentation.replace("{pad}", pad) * self.n_augmentation
        head = bos if self.bos_prefix else ""
        return f"{head}{self.query_prefix}{text}{aug}{self.query_tail}"

    def document_text(self, text: str, *, bos: str = "") -> str:
        """A text document as handed to the tokenizer."""
        return (bos if self.bos_prefix else "") + text


def era_of(version: str) -> str:
    """Map a colpali-engine version to its prompt era.

    >>> era_of("0.3.8"), era_of("0.3.11"), era_of("0.3.18")
    ('0.3.10', '0.3.11', '0.3.12')
    """
    try:
        parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3])
    except ValueError:
        raise PgmaxsimError(f"cannot read colpali-engine version {version!r}") from None
    if parts <= (0, 3, 10):
        return "0.3.10"
    if parts == (0, 3, 11):
        return "0.3.11"
    return "0.3.12"


def installed_era() -> str:
    """The era of the installed colpali-engine (PgmaxsimError if it is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return era_of(version("colpali-engine"))
    except PackageNotFoundError:
        raise PgmaxsimError(
            "colpali-engine is not installed: pip install --no-deps 'colpali-engine>=0.3.18' "
            "(after pip install 'pgmaxsim[models]')"
        ) from None


def prompt_format(family: str, era: str | None = None) -> PromptFormat:
    """The pinned format of ``family`` in ``era`` (None: the installed library's).

    ``era`` may be an era name, any colpali-engine version, or a recorded
    format name such as ``"colqwen2_5@0.3.12"``.
    """
    if family not in AUGMENTATION:
        raise PgmaxsimError(f"no prompt formats for family {family!r}")
    if era is None or era == "auto":
        era = installed_era()
    if "@" in era:
        fam, _, era = era.partition("@")
        if fam != family:
            raise PgmaxsimError(f"prompt format {fam}@{era} is for family {fam}, not {family}")
    if era not in ERAS:
        era = era_of(era)
    legacy = era == "0.3.10"
    prefix = "" if era == "0.3.12" else "Query: "
    n_aug = 1 if (legacy and family == "biqwen2_5") else 10
    tail = "\n" if legacy and family in ("colpali", "colidefics3") else ""
    if family == "colpali":
        image_prompt = PALI_IMAGE_PROMPT
    elif family == "colidefics3":
        image_prompt = IDEFICS_IMAGE_PROMPT_OLD if legacy else IDEFICS_IMAGE_PROMPT
    else:
        image_prompt = QWEN_IMAGE_PROMPT
    return PromptFormat(
        family=family, era=era, query_prefix=prefix, augmentation=AUGMENTATION[family],
        n_augmentation=n_aug, query_tail=tail, image_prompt=image_prompt,
        bos_prefix=family == "colpali",
    )
