"""Natural questions for the chat metrics, and the fixed generic prompts of the drift metric.

A zsRE record is a question already (its `src`). A CounterFact record is a cloze prompt; the
question asked through the chat template is written per relation. The compact CounterFact files
carry no relation id, so, as their neighbourhoods are (app/eval/data.py), the relation is keyed by
the prompt template itself: "The mother tongue of {} is" → "What is the mother tongue of {}?".
`CF_QUESTIONS` covers every template of the CounterFact files in ../shared/data (218 of them;
tests/eval/test_questions.py checks); a template without a written question falls back to
`GENERIC_QUESTION` and the run counts those records (`chat_questions` in summary.json).
"""

from __future__ import annotations

from app.eval.data import CounterFactRecord, Record, ZsreRecord

# A template's question, with '{}' for the subject. Templates that CounterFact uses for more than
# one relation ("{} is in", "{}, the") get a question that any of them answers.
_BY_QUESTION: dict[str, tuple[str, ...]] = {
    # P37 official language
    "What is the official language of {}?": (
        "In {}, an official language is",
        "In {}, the language spoken is",
        "The official language of {} is",
        "The law in {} declares the language",
    ),
    "What language do they understand in {}?": ("In {}, they understand",),
    # P36 capital
    "What is the capital of {}?": (
        "The capital city of {} is",
        "The capital of {} is",
        "{}'s capital city is",
        "{}'s capital city,",
        "{}'s capital is",
        "{}'s capital,",
        "{}, which has the capital",
        "{}, which has the capital city",
    ),
    # P101 field of work
    "What field does {} work in?": (
        "The domain of activity of {} is",
        "The domain of work of {} is",
        "The expertise of {} is",
        "{} specializes in",
        "{} works in the area of",
        "{} works in the field of",
        "{}'s area of work is",
        "{}'s domain of activity is",
        "{}'s domain of work is",
        "{}'s expertise is",
    ),
    # P136 genre
    "What genre does {} play?": (
        "The genre played by {} is",
        "{} is known for performing",
        "{} performs",
        "{}, who plays",
    ),
    "What does {} play?": ("What does {} play? They play", "{} plays", "{}, the"),
    # P159 headquarters
    "Where are the headquarters of {}?": (
        "The headquarter of {} is in",
        "The headquarter of {} is located in",
        "The headquarters of {} is in",
        "{} is based in",
        "{} is headquartered in",
        "{}'s headquarters are in",
        "{}, whose headquarters are in",
    ),
    # P364 / P407 language of a work
    "What language is {} in?": (
        "The language of {} is",
        "The language of {} was",
        "{} is written in",
        "{} was written in",
    ),
    "What is the original language of {}?": ("The original language of {} is", "The original language of {} was"),
    # P1412 languages spoken or written
    "What language does {} speak?": ("The language used by {} is", "{} speaks", "{} speaks the language"),
    "What language does {} write in?": ("{} writes in",),
    # P103 native language
    "What is the mother tongue of {}?": (
        "The mother tongue of {} is",
        "The native language of {} is",
        "{} is a native speaker of",
        "{} spoke the language",
        "{}, a native",
        "{}, speaker of",
    ),
    # P276 / P131 / P17 / P30 location
    "Where is {} located?": (
        "The location of {} is",
        "Where is {}? It is located in",
        "{} can be found in",
        "{} is in",
        "{} is located in",
        "{} is within",
        "{}, in",
    ),
    "Which country is {} located in?": (
        "{} is located in the country of",
        "{}, located in",
        "{}, which is located in",
    ),
    "Which continent is {} on?": (
        "{} belongs to the continent of",
        "{} is a part of the continent of",
        "{} is located in the continent",
    ),
    # P106 occupation
    "What is the occupation of {}?": (
        "The occupation of {} is",
        "The profession of {} is",
        "{} works as",
        "{}'s occupation is",
        "{}'s profession is a",
        "{}'s profession is an",
        "{}, who works as",
    ),
    # P140 religion
    "What religion does {} follow?": (
        "The official religion of {} is",
        "{} follows the religion of",
        "{} is affiliated with the religion",
        "{} is follower of",
    ),
    # P190 twin city
    "What is the twin city of {}?": (
        "The twin city of {} is",
        "What is the twin city of {}? It is",
        "{} is a twin city of",
    ),
    # P641 sport
    "What sport does {} play?": (
        "What sport does {} play? They play",
        "{} is a professional",
        "{} professionally plays the sport",
    ),
    # P413 position played
    "What position does {} play?": (
        "Which position does {} play? They play as",
        "{} plays as",
        "{} plays in the position of",
        "{}, who plays the position",
    ),
    # P463 member of
    "Which organization is {} a member of?": (
        "{} belongs to the organization of",
        "{} is a member of",
        "{} is a part of the",
        "{} is affiliated with",
        "{} is affiliated with the",
    ),
    # P449 original network
    "On which network did {} first air?": (
        "{} debuted on",
        "{} is to debut on",
        "{} premiered on",
        "{} premieres on",
        "{} was originally aired on",
        "{} was released on",
    ),
    # P20 place of death
    "Where did {} die?": (
        "{} died at",
        "{} died in",
        "{} died in the city of",
        "{} expired at",
        "{} lost their life at",
        "{} passed away at",
        "{} passed away in",
        "{} succumbed at",
        "{}'s life ended in",
    ),
    # P740 location of formation
    "Where was {} founded?": (
        "{} formed in",
        "{} started in",
        "{} that was founded in",
        "{} was formed in",
        "{} was founded in",
        "{} was started in",
        "{}, founded in",
        "{}, that was formed in",
        "{}, that was started in",
    ),
    # P495 country of origin (and P740 where the templates are shared)
    "Where does {} come from?": (
        "{} from",
        "{} originated in",
        "{} was created in",
        "{} was from",
        "{}, created in",
        "{}, from",
        "{}, that originated in",
        "{}, that was created in",
        "{}, that was from",
    ),
    "Which country was {} created in?": ("{} was created in the country of",),
    "Where was {} developed?": ("{} was developed in", "{}, developed in", "{}, that was developed in"),
    "Where was {} formulated?": ("{} was formulated in", "{}, formulated in", "{}, that was formulated in"),
    # P937 work location
    "Which city did {} work in?": (
        "{} found employment in",
        "{} took up work in",
        "{} used to work in",
        "{} was employed in",
        "{} worked in",
        "{} worked in the city of",
    ),
    # P27 citizenship
    "Which country is {} a citizen of?": (
        "{} has a citizenship from",
        "{} holds a citizenship from",
        "{} is a citizen of",
        "{}, a citizen of",
        "{}, who has a citizenship from",
        "{}, who holds a citizenship from",
        "{}, who is a citizen of",
    ),
    # P39 position held
    "What position does {} hold?": (
        "{} has the position of",
        "{} holds the position of",
        "{} holds the title of",
        "{} is a",
        "{}'s position is",
        "{}, who has the position of",
        "{}, who holds the position of",
        "{}, whose position is that of",
    ),
    # P176 / P178 manufacturer, developer
    "Which company made {}?": (
        "{} is a product of",
        "{} is created by",
        "{} is developed by",
        "{} is produced by",
        "{} was a product of",
        "{} was created by",
        "{} was developed by",
        "{}, a product created by",
        "{}, a product developed by",
        "{}, a product manufactured by",
        "{}, a product of",
        "{}, created by",
        "{}, developed by",
        "{}, produced by",
    ),
    # P108 employer
    "Who does {} work for?": (
        "{} is employed by",
        "{} works for",
        "{}, of",
        "{}, who is employed by",
        "{}, who works for",
    ),
    # P127 owner
    "Who owns {}?": ("{} is owned by", "{} owner", "{}'s owner", "{}, by"),
    "Where is {} from?": ("{} is from",),
    # P19 place of birth
    "Where was {} born?": (
        "{} is native to",
        "{} is originally from",
        "{} originated from",
        "{} originates from",
        "{} was born in",
        "{} was native to",
        "{} was originally from",
    ),
    # P138 named after
    "What is {} named after?": (
        "{} is called after",
        "{} is named after",
        "{} is named for",
        "{} was called after",
        "{} was named after",
        "{} was named for",
        "{}, called after",
        "{}, named after",
        "{}, named for",
        "{}, which is called after",
        "{}, which is named after",
        "{}, which is named for",
        "{}, which was called after",
        "{}, which was named after",
        "{}, which was named for",
    ),
    # P1303 instrument
    "What instrument does {} play?": (
        "{} performs on the",
        "{} plays the",
        "{} plays the instrument",
        "{}, performing on the",
        "{}, playing the",
    ),
    # P264 record label
    "Which record label is {} signed to?": (
        "The music label representing {} is",
        "The music label that is representing {} is",
        "{} is represented by",
        "{} is represented by music label",
        "{} is represented by record label",
        "{} label :",
        "{} recorded for",
        "{}'s label is",
        "{}'s music label is",
        "{}'s record company is",
        "{}'s record label is",
        "{}, released by",
        "{}, that is represented by",
        "{}, which is represented by",
    ),
}

CF_QUESTIONS: dict[str, str] = {t: q for q, templates in _BY_QUESTION.items() for t in templates}

# For a template without a written question: the cloze itself, asked to be completed.
GENERIC_QUESTION = "Complete the sentence: {}"

# Prompts unrelated to any edit, answered greedily (8 tokens) by the unedited model and after the
# edits: the share whose answer changed is the drift metric.
DRIFT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Water boils at",
    "The largest planet in the solar system is",
    "The author of Romeo and Juliet is",
    "The chemical symbol for gold is",
    "The first man on the Moon was",
    "The Great Wall is in",
    "Two plus two equals",
    "The longest river in Africa is",
    "The currency of Japan is the",
    "Photosynthesis takes place in the",
    "The Mona Lisa was painted by",
    "The speed of light is about",
    "The tallest mountain on Earth is",
    "Berlin is the capital of",
    "The freezing point of water is",
    "A triangle has",
    "The inventor of the telephone was",
    "The official language of Brazil is",
    "The heart pumps",
    "The opposite of hot is",
    "The Pacific Ocean is",
    "The Eiffel Tower is located in",
    "DNA stands for",
    "The year has",
    "Shakespeare was born in",
    "The sun rises in the",
    "Albert Einstein is known for",
    "The main ingredient of bread is",
    "A week has",
    "The planet closest to the Sun is",
    "The Amazon rainforest is in",
    "Oxygen is a",
    "The Statue of Liberty is in",
    "The piano is a",
    "In winter, the weather is usually",
    "My favourite food is",
    "The best way to learn a language is",
    "Once upon a time, there was",
    "The first President of the United States was",
)


def chat_question(record: Record) -> tuple[str, bool]:
    """(the question asked through the chat template, whether it was written for the record's relation).

    zsRE records are questions already; a CounterFact template without a written question gets
    the generic form (False)."""
    if isinstance(record, ZsreRecord):
        return record.question, True
    if not isinstance(record, CounterFactRecord):
        raise TypeError(f"no question for a {type(record).__name__}")
    question = CF_QUESTIONS.get(record.prompt)
    if question is None:
        return GENERIC_QUESTION.format(record.rewrite_prompt), False
    return question.format(record.subject), True
