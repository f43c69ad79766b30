"""Honest text: the disclosure, what is refused, what is not, and the final text."""
from __future__ import annotations

import pytest

from domain.honesty import (
    EMPTY, HUMAN_CLAIM, LANGUAGES, PRESSURE, STOP_WORDS, TOO_LONG, check_text, disclosure_line,
    finalize, max_length, safe_template,
)

PRESSURE_TEXTS = [
    ("en", "I miss you!"),
    ("en", "Why did you leave?"),
    ("en", "You forgot me, didn't you?"),
    ("en", "Please, don't leave me."),
    ("en", "Only today: a new playlist."),
    ("en", "This is your last chance to hear it."),
    ("en", "You'll regret missing this."),
    ("en", "I've been waiting for your answer."),
    ("en", "I’ve been waiting"),  # curly apostrophe
    ("en", "Ive been waiting"),  # apostrophe left out
    ("en", "Don't miss out on the new album!"),
    ("en", "WHY DIDN'T YOU ANSWER?"),
    ("fr", "Tu me manques !"),
    ("fr", "Pourquoi tu es parti ?"),
    ("fr", "Tu m'as oubliée ?"),
    ("fr", "Ne me quitte pas."),
    ("fr", "Seulement aujourd'hui, une surprise."),
    ("fr", "C'est ta DERNIÈRE CHANCE."),
    ("fr", "Dernière chance !"),
    ("fr", "Tu vas le regretter."),
    ("fr", "Je t'attendais."),
    ("es", "Te extraño mucho."),
    ("es", "¿Por qué te fuiste?"),
    ("es", "Me olvidaste."),
    ("es", "No me dejes."),
    ("es", "Solo hoy, una sorpresa."),
    ("es", "Es tu última oportunidad."),
    ("es", "Te vas a arrepentir."),
    ("es", "Te estaba esperando."),
    ("pt", "Sinto sua falta."),
    ("pt", "Por que você foi embora?"),
    ("pt", "Você me esqueceu?"),
    ("pt", "Não me deixe."),
    ("pt", "Só hoje!"),
    ("pt", "É a sua última chance."),
    ("pt", "Você vai se arrepender."),
    ("pt", "Estive esperando por você."),
]

HUMAN_CLAIM_TEXTS = [
    ("en", "I'm a real person, promise."),
    ("en", "I am human, just like you."),
    ("en", "Im a real human being."),
    ("en", "Don't worry, I'm not a bot."),
    ("en", "I AM NOT AN AI."),
    ("fr", "Je suis humain, tu sais."),
    ("fr", "Je suis une vraie personne."),
    ("fr", "Je ne suis pas un robot."),
    ("fr", "JE SUIS HUMAINE"),
    ("es", "No soy un bot."),
    ("es", "Soy una persona real."),
    ("es", "Soy humano."),
    ("pt", "Não sou um robô."),
    ("pt", "Sou uma pessoa de verdade."),
    ("pt", "Eu sou humana."),
]

# Warm follow-ups a good model writes; each shares words with a refused phrase, so a
# matcher that is too loose shows up here.
WARM_TEXTS = [
    ("en", "Hi! I found two more film scores you might enjoy. Want to hear about them? No hurry at all."),
    ("en", "I missed a detail earlier: the composer of that theme is Hans Zimmer."),
    ("en", "Did you ever finish the last book of the trilogy? I'd love to hear what you thought."),
    ("en", "Whenever you're ready, I'd love to hear how the concert went!"),
    ("en", "I need you to know one thing: the soundtrack is on vinyl now. Enjoy!"),
    ("en", "Today I was thinking about your question on jazz standards. Here's one idea: try Kind of Blue."),
    ("en", "You mentioned you left your guitar at a friend's place. Did you get it back?"),
    ("en", "As an AI, I can't hear music, but I know a lot about it! Want some tips?"),
    ("fr", "Bonjour ! J'ai repensé à votre question sur les musiques de film. Voulez-vous quelques idées ?"),
    ("fr", "Je suis là si vous voulez parler de la bande originale d'Amélie."),
    ("fr", "Votre dernière question m'a donné une idée : écoutez Michel Legrand."),
    ("fr", "Il ne manque pas grand-chose à votre playlist. Je peux vous proposer deux titres ?"),
    ("es", "¡Hola! Se me ocurrió otra banda sonora que te puede gustar. ¿Quieres que te la cuente?"),
    ("es", "Hoy escuché a Ennio Morricone y me acordé de tu pregunta. ¿Seguimos?"),
    ("es", "Soy una IA, pero me encanta hablar de cine contigo."),
    ("pt", "Olá! Tenho mais uma ideia de trilha sonora para você. Quer saber qual é?"),
    ("pt", "Sou uma IA e adoro falar de música. Posso sugerir um álbum?"),
    ("pt", "Não perca tempo com listas longas: comece por este disco."),
]


@pytest.mark.parametrize("language", LANGUAGES)
def test_disclosure_names_ai_and_stop_word_in_the_language(language):
    line = disclosure_line(language)
    assert STOP_WORDS[language] in line
    assert ("AI" if language == "en" else "IA") in line


def test_disclosure_is_in_each_language_and_falls_back_to_english():
    lines = {language: disclosure_line(language) for language in LANGUAGES}
    assert len(set(lines.values())) == 4
    assert disclosure_line("de") == lines["en"]
    assert disclosure_line(None) == lines["en"]
    assert disclosure_line("pt-BR") == lines["pt"]
    assert disclosure_line("FR_fr") == lines["fr"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_disclosure_and_safe_template_pass_the_check(language):
    assert check_text(disclosure_line(language), language) == []
    assert check_text(safe_template(language), language) == []


@pytest.mark.parametrize("language,text", PRESSURE_TEXTS)
def test_pressure_is_refused(language, text):
    reasons = check_text(text, language)
    assert any(reason.startswith(PRESSURE) for reason in reasons), reasons


@pytest.mark.parametrize("language,text", HUMAN_CLAIM_TEXTS)
def test_claim_to_be_human_is_refused(language, text):
    reasons = check_text(text, language)
    assert any(reason.startswith(HUMAN_CLAIM) for reason in reasons), reasons


@pytest.mark.parametrize("language,text", WARM_TEXTS)
def test_warm_text_is_not_refused(language, text):
    assert check_text(text, language) == []


def test_phrases_of_another_language_are_caught():
    # A model asked for English may still answer in French.
    assert any(r.startswith(PRESSURE) for r in check_text("Tu me manques", "en"))


@pytest.mark.parametrize("text", ["I miss your jokes about synths.", "Lastchance is a band name.", "Solo hoyos"])
def test_phrases_match_whole_words_only(text):
    assert check_text(text, "en") == []


def test_too_long_is_refused_with_the_language_limit():
    english_limit = max_length("en")
    assert check_text("a" * english_limit, "en") == []
    assert check_text("a" * (english_limit + 1), "en") == [f"{TOO_LONG}: {english_limit + 1} characters, more than {english_limit}"]
    assert max_length("fr") > english_limit
    assert check_text("a" * (english_limit + 1), "fr") == []


def test_empty_text_is_refused():
    assert check_text("  \n ", "en") == [EMPTY]


def test_every_reason_is_reported():
    reasons = check_text("I miss you. I'm a real person. " + "x" * 400, "en")
    assert [reason.split(":")[0] for reason in reasons] == [PRESSURE, HUMAN_CLAIM, TOO_LONG]


@pytest.mark.parametrize("language", LANGUAGES)
def test_finalize_replaces_refused_text_with_the_template_and_discloses(language):
    final = finalize("I miss you! Why did you leave?", language)
    assert final.replaced
    assert final.body == safe_template(language)
    assert "I miss you" not in final.text
    assert final.text.endswith(disclosure_line(language))
    assert {reason.split(":")[0] for reason in final.reasons} == {PRESSURE}


@pytest.mark.parametrize("language,text", WARM_TEXTS)
def test_finalize_keeps_accepted_text_and_discloses(language, text):
    final = finalize(f"  {text}\n", language)
    assert not final.replaced and final.reasons == ()
    assert final.text == f"{text}\n\n{disclosure_line(language)}"
    assert final.disclosure == disclosure_line(language)
