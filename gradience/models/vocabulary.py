"""The embedded model's tokenizer: a small word-level vocabulary that round-trips its texts.

Pieces are words, single digits, punctuation, newlines and spaces. A single leading space
is glued to a following word (" apples"), as SentencePiece does, so a problem is ~40 tokens
rather than ~70; digits and punctuation never carry one (a space before them is its own
token), so "9" is one token wherever it stands. Single, shared digit tokens are what make
arithmetic learnable for a 1 M-parameter model: with " 4" and "4" as different tokens the
model has to learn every digit twice and addition stays near chance. Decoding concatenates pieces (``decoders.Fuse``), so
``decode(encode(text)) == text`` for every text made of known pieces; anything else maps to
``<unk>``. The vocabulary is derived from the texts the model is trained on (the arithmetic
task's templates and the pre-training corpus forms), sorted, so it is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# A word with at most one leading space, a single digit, '####', one other character, or one
# whitespace character. Covers every character, so nothing is silently dropped.
PIECE_PATTERN = r" ?[A-Za-z]+|\d|####|[^\sA-Za-z\d]|\s"
_BASE_PIECES = [str(d) for d in range(10)] + list("+-*/=.,?!:;$%()'\"#") + ["####"]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")


def pieces(text: str) -> list[str]:
    """The pre-tokenized pieces of ``text`` (what the vocabulary must contain)."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_vocabulary(texts: Iterable[str]) -> list[str]:
    """Special tokens, digits, punctuation and whitespace, then every piece seen in ``texts``
    (words with and without a leading space); sorted within groups, no duplicates."""
    base = set(_BASE_PIECES) | {" ", "\n"}
    seen: set[str] = set()
    for text in texts:
        # A word may start a sentence in one text and follow a space in another: keep both forms.
        for piece in pieces(text):
            word = piece.lstrip(" ")
            seen.update({word, " " + word} if word.isalpha() else {piece})
    ordered = list(SPECIAL_TOKENS) + sorted(base) + sorted(seen - base)
    return list(dict.fromkeys(ordered))


def build_tokenizer(vocabulary: list[str]) -> Tokenizer:
    """A `tokenizers` WordLevel tokenizer over ``vocabulary`` that prepends BOS like Mistral's."""
    vocab = {piece: index for index, piece in enumerate(vocabulary)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer):  # -> transformers.PreTrainedTokenizerFast
    """The transformers wrapper, with pad/bos/eos/unk named, saveable with save_pretrained."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
