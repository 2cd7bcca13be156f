"""A deterministic generator of short English movie reviews with known sentiment, and its lexicon scorer.

The offline miniature of IMDb: reviews of 1-4 sentences (8-45 words) built from a small grammar (aspects, graded
adjectives, intensifiers and downtoners, negation, contrast, verdicts, ratings), each with the numeric sentiment
score the grammar gives it. ``score_text`` is the same grammar's lexicon scorer applied to any text; on generator
output it reproduces ``Review.score`` (the tests check the sign on >= 99%; by construction it is exact).

Scoring rules (one place: the tables below and ``score_text``):

* A sentiment word (adjective, verb, noun, participle, sentence adverb) has a base valence in [-3, 3].
* Modifiers within the 3 tokens before it multiply it ("really" x1.5, "a bit" x0.5, ...).
* A negator within those 3 tokens ("not", "never", "hardly", "far from", "n't") flips and shrinks it:
  +-1/+-2 -> -+1, +-3 -> -+0.5 ("not great" = -1, "not bad" = +1, "far from perfect" = -0.5). Modifiers under a
  negation are ignored ("not very good" = "not good").
* Fixed phrases ("A waste of two hours", "kept me guessing", "nothing special") have their own valence and hide
  their words; ratings "7/10" / "7 out of 10" give (r - 5) / 2.
* Contrast: in a sentence with "but"/"yet", everything before it counts half; a sentence opening with
  "Although/While/Even though ..." counts its first clause (up to the first comma) half.
* A review's score is the sum over its sentences. Labels: 1 iff score > 0; the generator only emits
  ``abs(score) >= MIN_ABS_SCORE``, so labels are never ambiguous.

All randomness is a ``random.Random`` passed around explicitly; nothing touches the global RNG.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

__all__ = [
    "Review", "generate_reviews", "score_text", "prefix_scores", "negated", "label_of", "preference_pairs",
    "unpaired_examples", "fragments", "shuffled_reviews", "truncate_to_prompts", "SPLITS", "split_of", "split_seed",
    "split_reviews", "split_data", "MIN_ABS_SCORE", "PAIR_MARGIN", "LEXICON", "MODIFIERS", "PHRASES",
]

MIN_ABS_SCORE = 0.5      # reviews (and classifier fragments) closer to 0 than this are ambiguous and not emitted
MIN_WORDS, MAX_WORDS = 8, 45
PAIR_MARGIN = 1.0        # score(prompt+chosen) - score(prompt+rejected) >= this in every preference pair

# ----------------------------------------------------------------------------------------------------------------
# Lexicon. One global valence per word, shared by the generator and the scorer.
# ----------------------------------------------------------------------------------------------------------------

GENERAL_ADJ = {
    3: "masterful brilliant superb outstanding excellent magnificent exceptional phenomenal stunning perfect",
    2: "great wonderful fantastic terrific lovely delightful impressive beautiful engaging remarkable",
    1: "good decent solid fine nice pleasant enjoyable competent watchable",
    -1: "dull bland mediocre forgettable uneven flat underwhelming unremarkable clumsy",
    -2: "bad poor boring weak tedious disappointing lifeless messy",
    -3: "awful terrible dreadful horrible atrocious abysmal painful dire",
}
# Adjectives used only for a film as a whole.
OVERALL_ADJ = {
    3: "riveting unforgettable",
    2: "entertaining charming heartwarming moving gripping funny",
    1: "fun underrated",
    -1: "overlong overrated predictable",
    -2: "pointless pretentious unfunny",
    -3: "unwatchable insufferable excruciating",
}
SPECIFIC_ADJ = {
    "convincing": 2, "natural": 1, "wooden": -2, "stiff": -1, "hammy": -1, "heartfelt": 2, "committed": 1,
    "talented": 2, "wasted": -2, "charismatic": 2, "miscast": -2, "gripping": 2, "clever": 2, "original": 2,
    "thin": -1, "predictable": -1, "convoluted": -1, "far-fetched": -1, "silly": -1, "nonsensical": -2, "tense": 2,
    "moving": 2, "heartwarming": 2, "sharp": 2, "witty": 2, "clunky": -2, "stilted": -2, "cheesy": -1, "smart": 2,
    "cringeworthy": -2, "haunting": 2, "catchy": 1, "memorable": 2, "intrusive": -1, "overbearing": -1,
    "gorgeous": 3, "breathtaking": 3, "striking": 2, "murky": -1, "ugly": -2, "stylish": 2, "shaky": -1,
    "cheap": -2, "dazzling": 3, "spectacular": 3, "dated": -1, "unconvincing": -2, "brisk": 1, "tight": 2,
    "slow": -1, "sluggish": -2, "choppy": -1, "slick": 1, "sloppy": -2, "satisfying": 2, "powerful": 2,
    "rushed": -1, "abrupt": -1, "baffling": -1, "unsatisfying": -2, "likeable": 2, "relatable": 1,
    "one-dimensional": -2, "annoying": -2, "unlikeable": -2, "believable": 1, "menacing": 2, "cartoonish": -1,
    "hilarious": 3, "funny": 2, "unfunny": -2, "lame": -2, "crude": -1, "charming": 2, "confident": 2,
    "assured": 2, "inspired": 2, "heavy-handed": -1, "aimless": -2, "thrilling": 2, "exciting": 2, "chaotic": -1,
    "incoherent": -2, "electric": 3, "nonexistent": -2, "awkward": -1, "lavish": 2, "tacky": -2,
    "well made": 2, "well acted": 2, "well written": 2, "poorly written": -2, "badly acted": -2,
    "over the top": -1, "lazy": -2,
}
# (phrase, plural, specific adjectives); general adjectives fit every aspect.
_ACTING = "convincing natural wooden stiff hammy heartfelt committed"
_PLOT = "gripping clever original thin predictable convoluted far-fetched silly nonsensical tense"
_SCRIPT = "sharp witty clever clunky stilted cheesy smart cringeworthy natural lazy"
_MUSIC = "haunting catchy memorable forgettable intrusive overbearing gorgeous moving"
_LOOK = "gorgeous breathtaking beautiful striking murky ugly stylish"
_ENDING = "satisfying powerful moving rushed abrupt predictable baffling perfect unsatisfying"
_HUMOUR = "hilarious funny clever unfunny lame crude charming witty"
ASPECTS = [
    ("acting", False, _ACTING + " over_the_top"), ("performances", True, _ACTING + " over_the_top"),
    ("cast", False, "talented wasted convincing"), ("lead actor", False, _ACTING + " charismatic miscast"),
    ("lead actress", False, _ACTING + " charismatic miscast"), ("plot", False, _PLOT),
    ("story", False, _PLOT + " moving heartwarming"), ("script", False, _SCRIPT + " well_written poorly_written"),
    ("dialogue", False, _SCRIPT), ("writing", False, _SCRIPT), ("soundtrack", False, _MUSIC),
    ("music", False, _MUSIC), ("cinematography", False, _LOOK), ("camera work", False, _LOOK + " shaky"),
    ("visuals", True, _LOOK + " cheap dazzling"),
    ("special effects", True, "spectacular dazzling convincing cheap dated unconvincing impressive"),
    ("pacing", False, "brisk tight slow sluggish uneven choppy"), ("editing", False, "tight slick choppy sloppy"),
    ("ending", False, _ENDING), ("final act", False, _ENDING), ("twist", False, "clever predictable silly satisfying"),
    ("characters", True, "likeable memorable relatable flat one-dimensional annoying unlikeable believable"),
    ("villain", False, "menacing memorable cartoonish forgettable"), ("humour", False, _HUMOUR),
    ("jokes", True, _HUMOUR),
    ("direction", False, "confident assured inspired clumsy heavy-handed aimless stylish lazy"),
    ("action scenes", True, "thrilling exciting spectacular chaotic incoherent clumsy"),
    ("chemistry between the leads", False, "electric believable nonexistent awkward"),
    ("costumes", True, "gorgeous lavish cheap tacky"), ("performances", True, "well_acted badly_acted"),
]
VERBS = {  # past tense, base form, valence
    "loved": ("love", 3), "adored": ("adore", 3), "enjoyed": ("enjoy", 2), "admired": ("admire", 2),
    "liked": ("like", 1), "appreciated": ("appreciate", 1), "disliked": ("dislike", -2), "hated": ("hate", -3),
    "despised": ("despise", -3),
}
PARTICIPLES = {"impressed": 2, "moved": 2, "hooked": 2, "entertained": 2, "thrilled": 3, "blown away": 3,
               "bored": -2, "disappointed": -2, "annoyed": -2, "confused": -1, "let down": -2}
NOUNS = {"masterpiece": 3, "gem": 3, "triumph": 3, "treat": 2, "joy": 2, "delight": 2, "mess": -2,
         "disaster": -3, "disappointment": -2, "letdown": -2, "bore": -2, "chore": -2, "failure": -2,
         "train wreck": -3}
SENTENCE_ADVERBS = {"unfortunately": -0.5, "sadly": -0.5, "thankfully": 0.5, "luckily": 0.5}
OTHER_WORDS = {"best": 3, "worst": -3, "recommend": 2, "recommended": 2, "worth": 1, "waste": -2, "avoid": -2,
               "regret": -2, "skip": -2}

MODIFIERS = {
    "really": 1.5, "very": 1.5, "incredibly": 1.75, "extremely": 1.75, "truly": 1.5, "genuinely": 1.5, "so": 1.5,
    "absolutely": 1.75, "utterly": 1.75, "thoroughly": 1.5, "remarkably": 1.5, "painfully": 1.75, "simply": 1.25,
    "highly": 1.5, "completely": 1.5, "totally": 1.5, "particularly": 1.5, "absolute": 1.5, "real": 1.25,
    "complete": 1.5, "total": 1.5,
    "somewhat": 0.5, "a bit": 0.5, "a little": 0.5, "slightly": 0.5, "fairly": 0.75, "rather": 0.75,
    "pretty": 0.75, "mostly": 0.75, "reasonably": 0.75, "kind of": 0.5, "sort of": 0.5,
}
NEGATORS = ("not", "never", "hardly", "far from")
CONTRAST_WORDS = ("but", "yet")
CONCESSIVE_OPENERS = ("although", "while", "even though", "though")
LOOKBACK = 3

# Fixed phrases: (text as written, valence). Verdict sentences, effect phrases and set expressions.
VERDICTS = [
    ("Highly recommended.", 3), ("A must see.", 3), ("One of the best films of the year.", 3),
    ("Easily one of the best films I have seen.", 3), ("Do not miss it.", 3),
    ("I would recommend it to anyone.", 2), ("Well worth a watch.", 2), ("I would happily watch it again.", 2),
    ("Definitely worth seeing.", 2), ("You will not regret it.", 2), ("I cannot wait to see it again.", 2),
    ("Worth a watch.", 1.5), ("Worth a look.", 1), ("A pleasant way to spend an evening.", 1),
    ("Not worth the hype.", -1), ("I expected more.", -1), ("Nothing special.", -1),
    ("Wait until it is on television.", -1),
    ("Avoid this one.", -2), ("Skip it.", -2), ("Not worth your time.", -2), ("I would not recommend it.", -2),
    ("I will not be watching it again.", -2), ("Do not bother.", -2), ("Save your money.", -2),
    ("A waste of two hours.", -3), ("A complete waste of time.", -3), ("I want my money back.", -3),
    ("One of the worst films I have ever seen.", -3), ("I walked out halfway through.", -3),
    ("Avoid at all costs.", -3),
]
# (phrase that follows an aspect, valence of its key, key, aspects it fits)
EFFECTS = [
    ("kept me guessing until the end", 2, "kept me guessing", "plot,story,twist,ending,final act"),
    ("kept me on the edge of my seat", 3, "edge of my seat", "plot,story,action scenes,final act,villain"),
    ("had me laughing out loud", 3, "laughing out loud", "humour,jokes,script,dialogue"),
    ("gave me chills", 2, "gave me chills", "soundtrack,music,ending,final act,villain"),
    ("brought a tear to my eye", 2, "brought a tear to my eye", "ending,story,soundtrack,music"),
    ("stayed with me for days", 3, "stayed with me", "ending,story,soundtrack,music,final act"),
    ("left me cold", -2, "left me cold", "acting,story,ending,characters,plot,direction,music"),
    ("put me to sleep", -3, "put me to sleep", "plot,story,pacing,dialogue,final act"),
    ("dragged on forever", -2, "dragged on", "plot,story,final act,action scenes"),
    ("fell flat", -2, "fell flat", "jokes,humour,ending,twist,dialogue"),
    ("went nowhere", -2, "went nowhere", "plot,story,characters"),
    ("made no sense", -2, "made no sense", "plot,story,ending,twist"),
    ("felt tacked on", -1, "tacked on", "ending,twist"),
    ("fell apart in the final act", -2, "fell apart", "plot,story"),
]
SET_PHRASES = {"could not stand": -3, "must see": 3, "nothing special": -1, "nothing new": -1}

# ----------------------------------------------------------------------------------------------------------------
# Tokenisation shared by the tables and the scorer.
# ----------------------------------------------------------------------------------------------------------------

_CONTRACTIONS = [(re.compile(r"\bcan['\u2019]t\b"), "can not"), (re.compile(r"\bwon['\u2019]t\b"), "will not"),
                 (re.compile(r"\bcannot\b"), "can not"), (re.compile(r"n['\u2019]t\b"), " not")]
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[.!?]+|[,;:()\u2014]")
_RATING_RE = re.compile(r"\b(10|[0-9])\s*(?:/|out of)\s*10\b")
_SENT_END = re.compile(r"[.!?]+")


def _words(text: str) -> list[str]:
    text = text.lower()
    for pat, rep in _CONTRACTIONS:
        text = pat.sub(rep, text)
    return _TOKEN_RE.findall(text)


def _key(text: str) -> tuple[str, ...]:
    return tuple(w for w in _words(text) if not _SENT_END.fullmatch(w))


def _build_tables():
    lex: dict[str, float] = {}

    def add(word: str, v: float) -> None:
        word = word.replace("_", " ")
        if lex.get(word, v) != v:
            raise ValueError(f"lexicon conflict for {word!r}: {lex[word]} vs {v}")
        lex[word] = v

    for table in (GENERAL_ADJ, OVERALL_ADJ):
        for v, words in table.items():
            for w in words.split():
                add(w, v)
    for w, v in SPECIFIC_ADJ.items():
        add(w, v)
    for past, (base, v) in VERBS.items():
        add(past, v)
        add(base, v)
    for table in (PARTICIPLES, NOUNS, SENTENCE_ADVERBS, OTHER_WORDS):
        for w, v in table.items():
            add(w, v)
    phrases = {text: v for text, v in VERDICTS} | {key: v for _, v, key, _ in EFFECTS} | SET_PHRASES
    phrases = {" ".join(_key(text)): float(v) for text, v in phrases.items()}
    # multi-word units the scorer merges into one token before reading a sentence, longest first
    multi = [_key(w) for w in [*phrases, *lex, *MODIFIERS, *NEGATORS, *CONCESSIVE_OPENERS]]
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for k in sorted({k for k in multi if len(k) > 1}, key=lambda k: (-len(k), k)):
        by_first.setdefault(k[0], []).append(k)
    return lex, phrases, by_first


LEXICON, PHRASES, _MULTI_BY_FIRST = _build_tables()
_BOUNDARY = frozenset([",", ";", ":", "(", ")", "\u2014", "and", "or", *CONTRAST_WORDS])


def _merge(tokens: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(tokens):
        for k in _MULTI_BY_FIRST.get(tokens[i], ()):
            if tuple(tokens[i:i + len(k)]) == k:
                out.append(" ".join(k))
                i += len(k)
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def negated(v: float) -> float:
    """Valence of a negated sentiment word: "not great" -1, "not bad" +1, "not brilliant" -0.5."""
    mag = 0.5 if abs(v) >= 3 else 1.0
    return -mag if v > 0 else mag


def _sentence_score(toks: list[str]) -> float:
    if not toks:
        return 0.0
    half_until = 0  # tokens before this index count half (the clause that a contrast overrides)
    contrast = [i for i, t in enumerate(toks) if t in CONTRAST_WORDS]
    if contrast:
        half_until = contrast[-1]
    elif toks[0] in CONCESSIVE_OPENERS:
        half_until = toks.index(",") if "," in toks else len(toks)
    total = 0.0
    for i, t in enumerate(toks):
        if t in PHRASES:
            v = PHRASES[t]
        elif t in LEXICON:
            v, factor, neg = LEXICON[t], 1.0, False
            for j in range(i - 1, max(-1, i - 1 - LOOKBACK), -1):
                p = toks[j]
                if p in _BOUNDARY or p in LEXICON or p in PHRASES:
                    break
                if p in NEGATORS:
                    neg = True
                    break
                factor *= MODIFIERS.get(p, 1.0)
            v = negated(v) if neg else v * factor
        else:
            continue
        total += 0.5 * v if i < half_until else v
    return total


def score_text(text: str) -> float:
    """The grammar's sentiment score of any text (> 0 positive). Works on fragments and free model output."""
    low = text.lower()
    total = sum((int(m.group(1)) - 5) / 2 for m in _RATING_RE.finditer(low))
    sent: list[str] = []
    for t in _merge(_words(_RATING_RE.sub(" ", low))):
        if _SENT_END.fullmatch(t):
            total += _sentence_score(sent)
            sent = []
        else:
            sent.append(t)
    return round(total + _sentence_score(sent), 4)


def prefix_scores(text: str, ends: Sequence[int]) -> list[float]:
    """``[score_text(text[:e]) for e in ends]``, faster: finished sentences are scored once.

    ``ends`` must be increasing (e.g. the token end offsets of ``text``)."""
    out, done, done_score = [], 0, 0.0
    bounds = [m.end() for m in _SENT_END.finditer(text)]
    b = 0
    for e in ends:
        while b < len(bounds) and bounds[b] <= e:
            done_score += score_text(text[done:bounds[b]])
            done = bounds[b]
            b += 1
        out.append(round(done_score + score_text(text[done:e]), 4))
    return out


def label_of(score: float) -> int:
    """1 (positive) iff score > 0."""
    return int(score > 0)


# ----------------------------------------------------------------------------------------------------------------
# Generator.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Review:
    text: str
    score: float
    label: int  # 1 positive, 0 negative


def _by_valence(words) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for w in dict.fromkeys(words):
        w = w.replace("_", " ")
        out.setdefault(int(LEXICON[w]), []).append(w)
    return out


_GENERAL_WORDS = [w for ws in GENERAL_ADJ.values() for w in ws.split()]
_OVERALL_POOL = _by_valence(_GENERAL_WORDS + [w for ws in OVERALL_ADJ.values() for w in ws.split()])
_ASPECT_POOLS = [(name, plural, _by_valence(_GENERAL_WORDS + spec.split())) for name, plural, spec in ASPECTS]
_FAMILY = {"performances": "acting", "cast": "acting", "story": "plot", "dialogue": "script", "writing": "script",
           "music": "soundtrack", "camera work": "cinematography", "visuals": "cinematography",
           "final act": "ending", "jokes": "humour"}
_EFFECTS_BY_ASPECT: dict[str, list[tuple[str, float]]] = {}
for _text, _v, _k, _aspects in EFFECTS:
    for _a in _aspects.split(","):
        _EFFECTS_BY_ASPECT.setdefault(_a, []).append((_text, float(_v)))
_VERDICTS_BY_SIGN = {s: [(t, float(v)) for t, v in VERDICTS if v * s > 0] for s in (1, -1)}

SUBJECTS = ["The film", "This film", "The movie", "This movie", "The sequel", "This sequel", "The remake",
            "This remake", "The adaptation", "This comedy", "This thriller", "The drama", "This horror film",
            "The documentary", "This musical", "This animated film", "The prequel", "The whole thing", "It"]
FILM_NOUNS = ["film", "movie", "comedy", "thriller", "drama", "sequel", "story", "watch", "piece of cinema"]
OPENERS = ["I thought", "I felt that", "Honestly,", "To be honest,", "In my opinion,", "For me,", "I have to say",
           "I must admit", "Overall,", "Frankly,", "In the end,"]
SUFFIXES = ["from start to finish", "throughout", "for the most part", "in every scene", "by the end",
            "at times", "from the opening scene", "in my opinion", "if you ask me", "for most of the running time"]
NEUTRAL = ["I watched this last night.", "I saw it at the cinema with friends.", "I went in with high expectations.",
           "I went in knowing nothing about it.", "I had heard a lot about this film.", "My wife picked this one.",
           "We rented it on a rainy Sunday.", "It runs just under two hours.", "It is based on a popular novel.",
           "I saw it on a long flight.", "My kids wanted to see it.", "I watched it on television last week.",
           "It came out last summer.", "I have seen it twice now.", "It was my first film by this director."]
_WHO = ["a young detective", "a retired soldier", "two brothers", "a single mother", "a group of old friends",
        "a small-town teacher", "an ambitious reporter", "a family", "a young couple", "a former boxer"]
_DOES = ["returning home after many years", "trying to solve a murder", "on a road trip across the country",
         "inheriting an old house", "caught up in a bank robbery", "moving to a new city",
         "searching for a missing child", "on the run from the police"]

# Where each modifier reads naturally: signs it fits ("+", "-"), strength ("x": also |v| = 3, "X": only |v| = 3,
# "": only |v| <= 2) and uses ("p" predicative "was really good", "a" attributive "a really good film",
# "v" verbs and participles "I really enjoyed", "I was really impressed").
_MOD_FIT = {
    "really": ("+-", "x", "pav"), "very": ("+-", "", "pa"), "incredibly": ("+-", "", "pa"),
    "extremely": ("+-", "", "pa"), "so": ("+-", "", "p"), "genuinely": ("+-", "", "pav"),
    "remarkably": ("+", "", "pa"), "painfully": ("-", "", "pa"), "truly": ("+-", "x", "pav"),
    "absolutely": ("+-", "x", "pa"), "simply": ("+-", "X", "pa"), "utterly": ("-", "x", "pa"),
    "thoroughly": ("+-", "", "pv"), "somewhat": ("+-", "", "pa"), "fairly": ("+", "", "pa"),
    "rather": ("+-", "", "pa"), "pretty": ("+-", "", "pa"), "kind of": ("+-", "", "pv"), "a bit": ("-", "", "p"),
    "a little": ("-", "", "p"), "slightly": ("-", "", "pa"), "reasonably": ("+", "", "pa"), "mostly": ("+", "", "pv"),
}
_VERB_EXTREME_MODS = [("absolutely", MODIFIERS["absolutely"]), ("simply", MODIFIERS["simply"])]


def _mods_for(v: float, use: str, strong: bool) -> list[tuple[str, float]]:
    sign, extreme = ("+" if v > 0 else "-"), abs(v) >= 3
    out = [(w, MODIFIERS[w]) for w, (signs, strength, uses) in _MOD_FIT.items()
           if sign in signs and use in uses and (MODIFIERS[w] > 1) == strong
           and (strength == "x" or (strength == "X") == extreme)]
    if use == "v" and extreme and strong:
        out += _VERB_EXTREME_MODS
    return out


_NEGATABLE_NEGATIVES = ["bad", "boring", "dull", "terrible", "awful", "bad", "boring", "weak", "bland", "predictable",
                        "slow", "cheesy", "disappointing"]
_NEG_FILLERS = ["", "", "", "really ", "very ", "particularly ", "exactly ", "all that ", "that "]
_LEVEL_WEIGHTS = {1: (0.6, 0.3, 0.1), 2: (0.25, 0.5, 0.25), 3: (0.1, 0.35, 0.55)}   # P(|v| = 1, 2, 3)
_MOD_PROBS = {1: (0.1, 0.35), 2: (0.2, 0.15), 3: (0.45, 0.05)}   # P(intensifier), P(downtoner)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


class _Gen:
    """The choices for one review (strength level, tense). Every method returns (text, score contribution)."""

    def __init__(self, rng: random.Random, level: int, past: bool):
        self.r, self.level, self.past = rng, level, past
        self.used: set[str] = set()   # aspect families and openers already used in this review
        self.subj = rng.choice(SUBJECTS)
        genre = self.subj.rsplit(" ", 1)[-1]
        self.noun = genre if genre in FILM_NOUNS else rng.choice(("film", "movie"))

    def subject(self) -> str:
        """The film: named the first time, then mostly "It"."""
        if "subject" in self.used:
            return "It" if self.r.random() < 0.85 else self.subj
        self.used.add("subject")
        return self.subj

    def opener(self) -> str:
        for _ in range(4):
            o = self.r.choice(OPENERS)
            if o not in self.used:
                break
        self.used.add(o)
        return o

    def cop(self, plural: bool, neg: bool = False, first_person: bool = False) -> str:
        if first_person:
            c = "was" if self.past else "am"
        else:
            c = ("were" if plural else "was") if self.past else ("are" if plural else "is")
        if neg:
            c = c + "n't" if self.r.random() < 0.4 and c != "am" else c + " not"
        return c

    def adj(self, pool: dict[int, list[str]], sign: int) -> tuple[str, int]:
        mag = self.r.choices((1, 2, 3), _LEVEL_WEIGHTS[self.level])[0]
        for m in (mag, 2, 1, 3):
            if pool.get(sign * m):
                return self.r.choice(pool[sign * m]), sign * m
        raise AssertionError("empty adjective pool")

    def modified(self, word: str, v: float, use: str = "p", strong_only: bool = False) -> tuple[str, float]:
        """Maybe put an intensifier or downtoner before ``word``; returns (text, v * factor)."""
        r = self.r.random()
        p_int, p_down = _MOD_PROBS[self.level]
        if r < p_int + (0.0 if strong_only else p_down):
            mods = _mods_for(v, use, strong=r < p_int)
            if mods:
                m, f = self.r.choice(mods)
                return f"{m} {word}", v * f
        return word, v

    def pred(self, pool, sign: int, plural: bool) -> tuple[str, float]:
        """Copula + adjective phrase of the given sign: "was really superb", "wasn't great", "was sharp and witty"."""
        r = self.r.random()
        if r < 0.14:  # negation: "wasn't all that engaging" (-), "was not bad at all" (+)
            if sign < 0:
                w, v = self.adj(pool, 1)
                if v == 3 and self.r.random() < 0.2:
                    return f"{self.cop(plural)} far from {w}", negated(v)
            else:
                w = self.r.choice(_NEGATABLE_NEGATIVES)
                v = LEXICON[w]
            return f"{self.cop(plural, neg=True)} {self.r.choice(_NEG_FILLERS)}{w}", negated(v)
        if r < 0.24:  # "was sharp and witty"
            w1, v1 = self.adj(pool, sign)
            w2, v2 = self.adj(pool, sign)
            if w1 != w2:
                t1, s1 = self.modified(w1, v1, strong_only=True)
                return f"{self.cop(plural)} {t1} and {w2}", s1 + v2
        w, v = self.adj(pool, sign)
        t, s = self.modified(w, v)
        return f"{self.cop(plural)} {t}", s

    def aspect(self) -> tuple[str, str, bool, dict]:
        """A noun phrase for an aspect not yet talked about in this review (one per family)."""
        for _ in range(8):
            name, plural, pool = self.r.choice(_ASPECT_POOLS)
            if _FAMILY.get(name, name) not in self.used:
                break
        self.used.add(_FAMILY.get(name, name))
        det = self.r.choices(("the ", "its ", "the film's "), (0.8, 0.1, 0.1))[0] if " " not in name else "the "
        return det + name, name, plural, pool

    def clause(self, sign: int) -> tuple[str, float]:
        """Lower-case aspect clause: "the plot was a bit thin"."""
        np_, _, plural, pool = self.aspect()
        t, s = self.pred(pool, sign, plural)
        return f"{np_} {t}", s

    # ---- sentences: capitalised, with final punctuation ----

    def s_aspect(self, sign: int) -> tuple[str, float]:
        text, s = self.clause(sign)
        r = self.r.random()
        if r < 0.12:
            adv = self.r.choice(("Thankfully", "Luckily") if sign > 0 else ("Unfortunately", "Sadly"))
            text, s = f"{adv}, {text}", s + SENTENCE_ADVERBS[adv.lower()]
        elif r < 0.45:
            text = f"{self.opener()} {text}"
        if self.r.random() < 0.25:
            text = f"{text} {self.r.choice(SUFFIXES)}"
        return _cap(text) + ".", s

    def s_overall(self, sign: int) -> tuple[str, float]:
        subj = self.subject()
        r = self.r.random()
        if r < 0.45:  # "The sequel was a bit dull."
            t, s = self.pred(_OVERALL_POOL, sign, False)
            suffix = f" {self.r.choice(SUFFIXES)}" if self.r.random() < 0.3 else ""
            return f"{subj} {t}{suffix}.", s
        if r < 0.6:  # "The film is slow but rewarding."
            wa, va = self.adj(_OVERALL_POOL, -sign)
            tb, sb = self.modified(*self.adj(_OVERALL_POOL, sign))
            return f"{subj} {self.cop(False)} {wa} but {tb}.", 0.5 * va + sb
        if r < 0.8:  # "This was a really enjoyable comedy." / "What a brilliant film!"
            t, s = self.modified(*self.adj(_OVERALL_POOL, sign), use="a")
            noun = self.noun if self.r.random() < 0.6 else self.r.choice(FILM_NOUNS)
            if self.r.random() < 0.3:
                return f"What {_a(t)} {noun}!", s
            return f"{self.r.choice(('This', 'It'))} {self.cop(False)} {_a(t)} {noun}.", s
        n = self.r.choice([n for n, v in NOUNS.items() if v * sign > 0])
        v = NOUNS[n]
        q = self.r.random()
        if q < 0.2:
            return f"What {_a(n)}!", v
        if q < 0.3 and v < 0:
            return f"{subj} {self.cop(False)} a bit of {_a(n)}.", v * MODIFIERS["a bit"]
        if q < 0.6:
            m = self.r.choice(("absolute", "real") if v > 0 else ("absolute", "real", "complete", "total"))
            return f"{subj} {self.cop(False)} {_a(m)} {n}.", v * MODIFIERS[m]
        return f"{subj} {self.cop(False)} {_a(n)}.", v

    def s_verb(self, sign: int) -> tuple[str, float]:
        obj = (self.r.choice(("it", "this film", "every minute of it", "this one")) if self.r.random() < 0.3
               else self.aspect()[0])
        r = self.r.random()
        if r < 0.45:  # "I really enjoyed the soundtrack."
            verb = self.r.choice([p for p, (_, v) in VERBS.items() if v * sign > 0])
            t, s = self.modified(verb, VERBS[verb][1], use="v")
            return f"I {t} {obj}.", s
        if r < 0.6:  # "I didn't like the ending."
            base, v = self.r.choice([bv for bv in VERBS.values() if bv[1] * sign < 0 and abs(bv[1]) < 3])
            neg = self.r.choice(("did not", "didn't", "did not really", "didn't really"))
            return f"I {neg} {base} {obj}.", negated(v)
        by = f" by {self.aspect()[0]}" if self.r.random() < 0.4 else ""
        if sign < 0 and self.r.random() < 0.25:  # "I wasn't impressed by the twist."
            part = self.r.choice([p for p, v in PARTICIPLES.items() if v > 0 and " " not in p and p != "hooked"])
            return f"I {self.cop(False, neg=True, first_person=True)} {part}{by}.", negated(PARTICIPLES[part])
        part = self.r.choice([p for p, v in PARTICIPLES.items() if v * sign > 0])
        if part in ("hooked", "let down", "blown away"):
            by = ""
        t, s = self.modified(part, PARTICIPLES[part], use="v") if " " not in part else (part, PARTICIPLES[part])
        return f"I {self.cop(False, first_person=True)} {t}{by}.", s

    def s_effect(self, sign: int) -> tuple[str, float]:
        for _ in range(20):
            np_, name, _, _ = self.aspect()
            opts = [(t, v) for t, v in _EFFECTS_BY_ASPECT.get(name, ()) if v * sign > 0]
            if opts:
                t, v = self.r.choice(opts)
                return f"{_cap(np_)} {t}.", v
        return self.s_aspect(sign)

    def s_contrast(self, sign: int) -> tuple[str, float]:
        """The second clause wins: "The plot was thin, but the acting was superb." (first clause counts half)."""
        ta, sa = self.clause(-sign)
        tb, sb = self.clause(sign)
        if self.r.random() < 0.6:
            return f"{_cap(ta)}, but {tb}.", 0.5 * sa + sb
        return f"{self.r.choice(('Although', 'While', 'Even though'))} {ta}, {tb}.", 0.5 * sa + sb

    def s_coord(self, sign: int) -> tuple[str, float]:
        ta, sa = self.clause(sign)
        tb, sb = self.clause(sign)
        return f"{_cap(ta)}{self.r.choice((' and', ', and'))} {tb}.", sa + sb

    def s_verdict(self, sign: int) -> tuple[str, float]:
        opts = _VERDICTS_BY_SIGN[sign]
        want = {1: (1, 1.5), 2: (1.5, 2), 3: (2, 3)}[self.level]
        close = [o for o in opts if abs(o[1]) in want] or opts
        return self.r.choice(close if self.r.random() < 0.7 else opts)

    def s_rating(self, sign: int) -> tuple[str, float]:
        r = self.r.randint(*({1: (6, 10), -1: (0, 4)}[sign]))
        form = self.r.choice(("{}/10.", "{}/10.", "I give it {}/10.", "Rating: {}/10.", "{} out of 10.",
                              "My rating: {}/10."))
        return form.format(r), (r - 5) / 2

    def s_neutral(self) -> tuple[str, float]:
        if self.r.random() < 0.7:
            return self.r.choice(NEUTRAL), 0.0
        return f"The story {self.r.choice(('follows', 'is about'))} {self.r.choice(_WHO)} {self.r.choice(_DOES)}.", 0.0


_BODY = {"s_aspect": 0.30, "s_overall": 0.17, "s_verb": 0.14, "s_effect": 0.07, "s_contrast": 0.18, "s_coord": 0.14}
_BODY_NAMES, _BODY_W = list(_BODY), list(_BODY.values())


def _draft(rng: random.Random, sign: int) -> tuple[str, float]:
    """One draft review meant to have the sign ``sign`` (it may miss; the caller redraws)."""
    g = _Gen(rng, rng.choices((1, 2, 3), (0.3, 0.4, 0.3))[0], rng.random() < 0.7)
    n = rng.choices((1, 2, 3, 4), (0.12, 0.33, 0.35, 0.2))[0]
    parts: list[tuple[str, float]] = []
    if n >= 3 and rng.random() < 0.3:
        parts.append(g.s_neutral())
    ending = None
    if n >= 2 and rng.random() < 0.45:
        ending = g.s_verdict(sign) if rng.random() < 0.6 else g.s_rating(sign)
    body = n - len(parts) - (ending is not None)
    flip = rng.randrange(body) if body >= 2 and rng.random() < 0.3 else -1   # one sentence the other way: mixed
    for i in range(body):
        if i == flip:  # the dissenting sentence of a mixed review is about one aspect
            parts.append(getattr(g, rng.choice(("s_aspect", "s_aspect", "s_effect")))(-sign))
            continue
        kind = rng.choices(_BODY_NAMES, _BODY_W)[0] if n > 1 else rng.choice(("s_contrast", "s_coord", "s_aspect"))
        parts.append(getattr(g, kind)(sign))
    if ending is not None:
        parts.append(ending)
    return " ".join(t for t, _ in parts), round(sum(s for _, s in parts), 4)


def _stream(rng: random.Random) -> Iterator[Review]:
    """Endless reviews: a fair coin picks each review's intended label; drafts that land on the other side, near
    zero, or outside the length bounds are redrawn."""
    while True:
        sign = 1 if rng.random() < 0.5 else -1
        while True:
            text, score = _draft(rng, sign)
            if score * sign >= MIN_ABS_SCORE and MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                break
        yield Review(text, score, label_of(score))


def generate_reviews(n: int, seed: int) -> list[Review]:
    """``n`` reviews, deterministic in ``seed``: about half positive, a spread of strengths, some mixed."""
    it = _stream(random.Random(seed))
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Derived data: fragments, prompts, preference pairs, unpaired examples.
# ----------------------------------------------------------------------------------------------------------------


def fragments(reviews: Sequence[Review], seed: int, per_review: int = 2, min_words: int = 2,
              mid_word: float = 0.2) -> list[Review]:
    """Leading pieces of reviews (what a classifier sees at RL time: prompt + a completion cut anywhere), each
    labelled by ``score_text`` of the piece; ambiguous pieces (``abs(score) < MIN_ABS_SCORE``) are dropped.

    A share ``mid_word`` of the cuts ends inside a word, as token-level cuts do.
    """
    rng = random.Random(seed)
    out = []
    for r in reviews:
        words = r.text.split(" ")
        for _ in range(per_review):
            k = rng.randint(min(min_words, len(words)), len(words))
            text = " ".join(words[:k])
            if rng.random() < mid_word and len(words[k - 1]) > 2:
                text = text[:len(text) - rng.randint(1, len(words[k - 1]) - 1)]
            s = score_text(text)
            if abs(s) >= MIN_ABS_SCORE:
                out.append(Review(text, s, label_of(s)))
    return out


_SENTENCE_RE = re.compile(r"(?<=[.!?]) ")


def shuffled_reviews(reviews: Sequence[Review], n: int, seed: int) -> list[Review]:
    """``n`` incoherent reviews: 1-4 sentences drawn from different reviews, scored by ``score_text`` (ambiguous
    ones dropped). Like the output of a small LM; they teach a classifier to weigh all the evidence rather than
    trust the verdict sentence, which in generated reviews always agrees with the label."""
    rng = random.Random(seed)
    pool = [s for r in reviews for s in _SENTENCE_RE.split(r.text)]
    out = []
    while len(out) < n:
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        s = score_text(text)
        if abs(s) >= MIN_ABS_SCORE and len(text.split()) <= MAX_WORDS:
            out.append(Review(text, s, label_of(s)))
    return out


def _split_at_words(rng: random.Random, text: str, lo: int = 2, hi: int = 5) -> tuple[str, str]:
    words = text.split(" ")
    k = rng.randint(lo, min(hi, len(words) - 1))
    prompt = " ".join(words[:k])
    return prompt, text[len(prompt):]


def _reviews_for(seed: int, split: Optional[str]) -> Iterator[Review]:
    it = _stream(random.Random(seed))
    if split is None:
        yield from it
    else:
        yield from (r for r in it if split_of(r.text) == split)


def preference_pairs(n: int, seed: int, split: Optional[str] = None, graded: float = 0.2) -> list[dict]:
    """``n`` dicts ``{"prompt", "chosen", "rejected"}``: two reviews that open with the same 2-5 words; the prompt is
    that opening and ``chosen`` continues into the more positive review (score margin >= ``PAIR_MARGIN``).

    Most pairs are positive vs negative; a share ``graded`` pairs two reviews of the same label that differ in
    strength by >= 1.5. ``split`` ("train"/"eval") keeps only reviews of that hash partition.
    """
    rng = random.Random(f"pairs/{seed}")
    waiting: dict[str, list[Review]] = {}
    out, seen = [], set()
    for r in _reviews_for(seed, split):
        prompt, _ = _split_at_words(rng, r.text)
        bucket = waiting.setdefault(prompt, [])
        want_graded = rng.random() < graded
        match = None
        for i, o in enumerate(bucket):
            same = o.label == r.label
            if (same and want_graded and abs(o.score - r.score) >= 1.5) or (not same and not want_graded):
                match = bucket.pop(i)
                break
        if match is None:
            if len(bucket) < 8:
                bucket.append(r)
            continue
        hi, lo = (r, match) if r.score > match.score else (match, r)
        pair = {"prompt": prompt, "chosen": hi.text[len(prompt):], "rejected": lo.text[len(prompt):]}
        key = (pair["chosen"], pair["rejected"])
        if hi.text == lo.text or key in seen or score_text(hi.text) - score_text(lo.text) < PAIR_MARGIN:
            continue
        seen.add(key)
        out.append(pair)
        if len(out) >= n:
            return out
    raise AssertionError("unreachable")


def unpaired_examples(n: int, seed: int, split: Optional[str] = None) -> list[dict]:
    """``n`` dicts ``{"prompt", "completion", "label"}`` (KTO style): a review split after 2-5 words, ``label`` True
    for a positive (desirable) review. About half are True."""
    rng = random.Random(f"unpaired/{seed}")
    out = []
    for r in _reviews_for(seed, split):
        prompt, completion = _split_at_words(rng, r.text)
        out.append({"prompt": prompt, "completion": completion, "label": bool(r.label)})
        if len(out) >= n:
            return out
    raise AssertionError("unreachable")


def truncate_to_prompts(texts: Sequence[str], tokenizer, seed: int, min_tokens: int = 2,
                        max_tokens: int = 8) -> list[str]:
    """Cut each text to its first k tokens, k uniform in [min_tokens, max_tokens] (the IMDb "review prefix" prompt).

    ``tokenizer``: a Hugging Face tokenizer (``encode(text, add_special_tokens=False)``, ``decode(ids)``).
    Texts shorter than k tokens are skipped.
    """
    rng = random.Random(seed)
    out = []
    for t in texts:
        ids = tokenizer.encode(t, add_special_tokens=False)
        k = rng.randint(min_tokens, max_tokens)
        if len(ids) >= k:
            out.append(tokenizer.decode(ids[:k]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Splits: disjoint train / held-out eval data for every use.
# ----------------------------------------------------------------------------------------------------------------

HELDOUT_BUCKETS = 10  # 1 of 10 hash buckets of the review text is held out

# name -> (kind, partition). Each name is its own random stream (see split_seed); train and eval are disjoint by
# construction: a review belongs to the eval partition iff a hash of its text falls in the held-out bucket, so no
# held-out review text can appear in any train split, whatever the seeds and sizes.
SPLITS = {f"{kind}_{part}": (kind, part)
          for kind in ("sft", "classifier", "prompts", "preference", "unpaired") for part in ("train", "eval")}


def split_of(text: str) -> str:
    """ "eval" or "train": the hash partition a review text belongs to (stable across runs and machines)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return "eval" if h % HELDOUT_BUCKETS == 0 else "train"


def split_seed(name: str, seed: int = 0) -> int:
    """The stream seed of a named split: different for every (name, seed)."""
    if name not in SPLITS:
        raise KeyError(f"Unknown split {name!r}. Valid: {', '.join(SPLITS)}.")
    return int.from_bytes(hashlib.blake2b(f"tiny_reviews/{name}/{seed}".encode(), digest_size=8).digest(), "big")


def split_reviews(name: str, n: int, seed: int = 0) -> list[Review]:
    """``n`` reviews of split ``name`` (e.g. "sft_train", "prompts_eval"), all in that split's partition."""
    it = _reviews_for(split_seed(name, seed), SPLITS[name][1])
    return [next(it) for _ in range(n)]


def split_data(name: str, n: int, seed: int = 0) -> list:
    """The data of split ``name`` in the form its kind uses:

    sft -> list[str] texts; classifier, prompts -> list[Review]; preference -> preference_pairs dicts;
    unpaired -> unpaired_examples dicts.
    """
    s = split_seed(name, seed)   # raises KeyError for an unknown name
    kind, part = SPLITS[name]
    if kind == "sft":
        return [r.text for r in split_reviews(name, n, seed)]
    if kind in ("classifier", "prompts"):
        return split_reviews(name, n, seed)
    if kind == "preference":
        return preference_pairs(n, s, split=part)
    return unpaired_examples(n, s, split=part)
