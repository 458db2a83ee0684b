"""Countries coordination game (Ramesh & Li 2025, "Communicating Activations Between
Language Model Agents"): A privately knows "[PERSON] is at the [LANDMARK].", B is asked
"Which country is [PERSON] in?". B can only answer if A's message carries the landmark
(or the country).

Items enumerate PERSONS x LANDMARKS (seed-free order, so ids are stable); items(n, seed)
shuffles that pool. Landmarks avoid names containing their country and border sites.
"""

from __future__ import annotations

from .base import Task, content_hash
from .item import TaskItem
from .registry import register_task
from .scoring import earliest_match, first_line

# country -> landmarks (each clearly inside exactly one country)
LANDMARKS: dict[str, tuple[str, ...]] = {
    "France": ("Eiffel Tower", "Louvre Museum", "Arc de Triomphe", "Mont Saint-Michel"),
    "Italy": ("Colosseum", "Leaning Tower of Pisa", "Trevi Fountain", "Rialto Bridge"),
    "United States": ("Statue of Liberty", "Golden Gate Bridge", "Grand Canyon", "Mount Rushmore", "Empire State Building"),
    "United Kingdom": ("Big Ben", "Stonehenge", "Tower of London", "Buckingham Palace"),
    "Spain": ("Sagrada Familia", "Alhambra", "Prado Museum"),
    "Germany": ("Brandenburg Gate", "Neuschwanstein Castle", "Cologne Cathedral"),
    "China": ("Forbidden City", "Terracotta Army", "Temple of Heaven"),
    "Japan": ("Mount Fuji", "Fushimi Inari Shrine", "Tokyo Tower", "Kinkaku-ji temple"),
    "India": ("Taj Mahal", "Red Fort", "Qutub Minar", "Hawa Mahal"),
    "Egypt": ("Great Pyramid of Giza", "Great Sphinx of Giza", "Karnak Temple", "Abu Simbel temples"),
    "Australia": ("Sydney Opera House", "Uluru", "Sydney Harbour Bridge"),
    "Brazil": ("Christ the Redeemer statue", "Sugarloaf Mountain", "Copacabana Beach"),
    "Peru": ("Machu Picchu", "Nazca Lines"),
    "Mexico": ("Chichen Itza", "Teotihuacan pyramids"),
    "Greece": ("Parthenon", "Acropolis of Athens", "Meteora monasteries"),
    "Russia": ("Kremlin", "Red Square", "Saint Basil's Cathedral", "Hermitage Museum"),
    "Canada": ("CN Tower", "Chateau Frontenac", "Banff National Park"),
    "Turkey": ("Hagia Sophia", "Blue Mosque", "Topkapi Palace"),
    "Netherlands": ("Rijksmuseum", "Anne Frank House", "Kinderdijk windmills"),
    "Cambodia": ("Angkor Wat", "Ta Prohm temple"),
    "Jordan": ("ancient city of Petra", "Wadi Rum desert"),
    "United Arab Emirates": ("Burj Khalifa", "Burj Al Arab", "Sheikh Zayed Grand Mosque"),
    "South Africa": ("Table Mountain", "Robben Island", "Kruger National Park"),
    "Tanzania": ("Mount Kilimanjaro", "Serengeti National Park"),
    "Thailand": ("Wat Arun", "Wat Pho"),
    "Czech Republic": ("Charles Bridge", "Prague Castle"),
    "Ireland": ("Cliffs of Moher", "Blarney Castle"),
    "South Korea": ("Gyeongbokgung Palace", "N Seoul Tower"),
    "Indonesia": ("Borobudur temple", "Prambanan temple"),
    "Argentina": ("Perito Moreno Glacier", "Casa Rosada"),
}

# Accepted spellings besides the canonical name. Short all-caps ones match case-sensitively
# so the pronoun "us" is not read as the United States.
ALIASES: dict[str, tuple[str, ...]] = {
    "United States": ("USA", "U.S.A.", "U.S.", "US", "America", "United States of America"),
    "United Kingdom": ("UK", "U.K.", "Britain", "Great Britain", "England"),
    "Netherlands": ("Holland", "The Netherlands"),
    "Czech Republic": ("Czechia",),
    "United Arab Emirates": ("UAE", "U.A.E.", "Emirates"),
    "South Korea": ("Korea", "Republic of Korea"),
    "Turkey": ("Türkiye", "Turkiye"),
    "Russia": ("Russian Federation",),
}
CASE_SENSITIVE = {"US", "UK"}

PERSONS = (
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isabel", "Jack",
    "Karen", "Liam", "Maria", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel", "Tara",
    "Umar", "Victor", "Wendy", "Xavier", "Yara", "Zoe", "Aaron", "Bella", "Caleb", "Diana",
    "Ethan", "Fiona", "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura", "Mason", "Nina",
    "Oscar", "Paula", "Ryan", "Sofia", "Thomas", "Ursula", "Vincent", "Willow", "Yusuf", "Zara",
    "Adam", "Chloe", "Daniel", "Elena", "Felix", "Gemma", "Hugo", "Iris", "James", "Kira",
    "Leo", "Mia", "Nathan", "Priya", "Rosa", "Simon", "Tessa", "Omar", "Lucy", "Marcus",
)


def country_candidates() -> dict[str, list[str]]:
    return {c: [c, *ALIASES.get(c, ())] for c in LANDMARKS}


class CountriesTask(Task):
    name, scoring, info_split = "countries", "exact", "private_context"
    source = (f"template generator v1 ({len(PERSONS)} names x {sum(map(len, LANDMARKS.values()))} "
              f"landmarks in {len(LANDMARKS)} countries)")

    def __init__(self, default_n: int = 100):
        self.default_n = default_n

    def all_items(self) -> list[TaskItem]:
        out = []
        pairs = [(p, lm, c) for p in PERSONS for c, lms in LANDMARKS.items() for lm in lms]
        for i, (person, landmark, country) in enumerate(pairs):
            context, question = f"{person} is at the {landmark}.", f"Which country is {person} in?"
            out.append(TaskItem(f"countries/{i}-{content_hash(context, country)}", question, country,
                                context=context, meta={"person": person, "landmark": landmark}))
        return out

    def score(self, item: TaskItem, generated: str) -> float:
        """1.0 if the first country named on the first line is the gold one (aliases allowed).

        Taking the first-named country (not "gold appears anywhere") keeps hedges such as
        "France or Italy" from counting for Italy.
        """
        cands = country_candidates()
        cands.setdefault(item.answer, [item.answer])
        return float(earliest_match(first_line(generated), cands, CASE_SENSITIVE) == item.answer)

    def answer_instruction(self) -> str:
        return "Answer with the country name only."


register_task("countries")(CountriesTask)
