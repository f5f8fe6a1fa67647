"""The shipped taxonomy (streams/themes.yaml) against comments written for this test the way customers write them,
in English and Dutch: inflections, accents, typos it should catch and typos and look-alikes it must not; and the
themes file as a user writes one (YAML, JSON, mistakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.config import Settings
from streams.core.comments import ANY, ThemeMatcher, read_comment
from streams.errors import ConfigurationError
from streams.themes import DEFAULT_THEMES, load_taxonomy, theme_matcher

REQUIRED = {  # the issue's contact-center themes, each with English and Dutch patterns
    "waiting", "transfers", "bot_self_service", "friendliness", "knowledge", "resolved", "not_resolved",
    "billing_errors", "delivery", "app_website", "price", "callback_promises", "repeat_contact",
}  # fmt: skip

CORPUS = [
    # English
    ("Waited 45 minutes on hold before anyone picked up", {"waiting"}),
    ("The hold music drove me mad", {"waiting"}),
    ("I got transferred three times and had to explain everything again", {"transfers"}),
    ("Kept getting passed around between departments", {"transfers"}),
    ("The chatbot couldn't understand a simple question", {"bot_self_service"}),
    ("Stuck in the automated menu, no way to reach a person", {"bot_self_service"}),
    ("Very friendly and patient agent", {"friendliness"}),
    ("The lady was quite rude to me", {"friendliness"}),
    ("He clearly had no idea what he was talking about", {"knowledge"}),
    ("Agent was very knowledgeable", {"knowledge"}),
    ("My issue was resolved quickly, thanks!", {"resolved"}),
    ("Problem still not fixed after two weeks", {"not_resolved"}),
    ("Nobody solved my problem, it is still broken", {"resolved", "not_resolved"}),  # "solved my": known overlap
    ("I was overcharged on my last bill", {"billing_errors"}),
    ("Charged twice for the same month, want a refund", {"billing_errors"}),
    ("The parcel never arrived and tracking shows nothing", {"delivery"}),
    ("Delivery was two days late", {"delivery"}),
    ("The app keeps crashing when I try to log in", {"app_website"}),
    ("Website is confusing, could not find my invoice online", {"app_website"}),
    ("Way too expensive for what you get", {"price"}),
    ("Prices went up again", {"price"}),
    ("They promised to call me back and never did", {"callback_promises"}),
    ("Still waiting for the callback I was promised", {"waiting", "callback_promises"}),
    ("This is the third time I have called about this", {"repeat_contact"}),
    ("I had to call again because nothing happened", {"repeat_contact"}),
    ("Great service overall", set()),
    # typos: caught where a prefix reaches them, missed where it does not
    ("got transfered to the wrong team", {"transfers"}),  # one r: transfer* still catches it
    ("waitng forever", set()),  # a letter missing inside the word: not caught
    ("overcharged", {"billing_errors"}),
    ("frendly staff", set()),  # misspelt: not caught
    # look-alikes that must not count
    ("Please change my password", {"app_website"}),  # not "wait"
    ("The feedback form was short", set()),  # not "fee"
    ("Our site visit was well organised", {"app_website"}),  # "site" is a website word: a known look-alike
    ("A kind of weird experience", {"friendliness"}),  # "kind" as in "a kind of": a known look-alike
    # Dutch
    ("Ik heb 40 minuten moeten wachten", {"waiting"}),
    ("Eindeloos in de wacht gestaan", {"waiting"}),
    ("Ik wachtte een half uur", {"waiting"}),
    ("Drie keer doorverbonden, van het kastje naar de muur", {"transfers"}),
    ("Ik werd doorverwezen naar een andere afdeling", {"transfers"}),
    ("De chatbot snapte er niets van", {"bot_self_service"}),
    ("Dat keuzemenu is een doolhof", {"bot_self_service"}),
    ("Zeer vriendelijke medewerker", {"friendliness"}),
    ("Onvriendelijk en onbeschoft behandeld", {"friendliness"}),
    ("De medewerker wist het niet en gaf verkeerde informatie", {"knowledge"}),
    ("Deskundige hulp, dank!", {"knowledge"}),
    ("Mijn probleem is opgelost", {"resolved"}),
    ("Het is nog steeds niet opgelost", {"not_resolved"}),
    ("Er is dubbel afgeschreven van mijn rekening", {"billing_errors"}),
    ("De factuur klopt niet, ik wil mijn geld terug", {"billing_errors"}),
    ("Het pakket is nooit aangekomen", {"delivery"}),
    ("Bezorger kwam niet opdagen", {"delivery"}),
    ("Inloggen in de app lukt niet", {"app_website"}),
    ("Wachtwoord vergeten en de website helpt niet", {"app_website"}),  # wachtwoord is not waiting
    ("Veel te duur geworden", {"price"}),
    ("De prijzen zijn weer omhoog", {"price"}),
    ("Ze zouden terugbellen maar ik ben nooit gebeld", {"callback_promises"}),
    ("Ze hebben het beloofd maar niets gedaan", {"callback_promises"}),
    ("Voor de derde keer gebeld over hetzelfde", {"repeat_contact"}),
    ("Ik heb al meerdere keren contact gehad", {"repeat_contact"}),
    ("Geïrriteerd: gewacht en niet geholpen", {"waiting"}),  # accents off before matching
    ("Prima geholpen", set()),
    ("De levering duurde lang", {"delivery", "waiting"}),
    # Dutch typos and look-alikes
    ("doorverbondenn", set()),  # a letter too many: not caught
    ("wachtten", {"waiting"}),  # wachtte*: the past plural
    ("De bezorging was snel", {"delivery"}),
]


@pytest.fixture(scope="module")
def shipped() -> ThemeMatcher:
    return ThemeMatcher(load_taxonomy())


def test_the_shipped_taxonomy_has_the_contact_center_themes_in_both_languages(shipped: ThemeMatcher) -> None:
    assert REQUIRED <= set(shipped.names)
    english = {theme for text, themes in CORPUS[:26] for theme in themes}
    dutch = {theme for text, themes in CORPUS[34:] for theme in themes}
    assert REQUIRED <= english and REQUIRED <= dutch  # every theme is caught in each language by the corpus


@pytest.mark.parametrize(("comment", "expected"), CORPUS)
def test_realistic_comments_mention_what_they_talk_about(
    shipped: ThemeMatcher, comment: str, expected: set[str]
) -> None:
    read = read_comment(comment, shipped, "redacted")
    assert read.themes[0] == ANY and set(read.themes[1:]) == expected


def test_a_themes_file_in_yaml_or_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "themes.yaml"
    yaml_file.write_text("themes:\n  Parking:\n    - parkeer*\n    - car park\n")
    json_file = tmp_path / "themes.json"
    json_file.write_text(json.dumps({"themes": {"parking": ["parkeer*", "car park"]}}))
    for path in (yaml_file, json_file):
        matcher = theme_matcher(Settings(themes_file=path))
        assert matcher is not None and matcher.names == ("parking",)
        assert read_comment("Geen parkeerplaats", matcher, "redacted").themes == (ANY, "parking")
    assert theme_matcher(Settings(comments="off")) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("themes:\n  waiting: [wait*\n", "not YAML (line "),
        ("themes:\n  waiting:\n    - '*wait'\n", "theme 'waiting', pattern '*wait': a * must end a word"),
        ("- just a list\n", "expected 'themes:'"),
    ],
)
def test_an_unusable_themes_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "themes.yaml"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        load_taxonomy(path)
    assert str(caught.value).startswith(f"themes file {path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_taxonomy(tmp_path / "missing.yaml")


def test_the_default_is_the_shipped_file() -> None:
    assert load_taxonomy().source == f"themes file {DEFAULT_THEMES}"
