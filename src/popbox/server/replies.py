"""The one place where outcomes become `-ERR [CODE] text` (RFC 2449 §8, RFC 3206), and
the one table of response texts in other languages (RFC 6856 §3 LANG).

No exception text or class name ever reaches the wire: every negative reply the server
sends is built here from a value.

Languages: the texts below are English, which is also what `i-default` (RFC 2277 §4.5)
gives. `LANGUAGES` lists what LANG offers; `TRANSLATIONS` holds the other languages'
texts, keyed by the English text (a `{}` stands for a command name or a number);
`localize()` turns a reply into the session's language. Only human-readable text is
translated: response codes never, and neither are the +OK lines clients parse (STAT,
LIST, UIDL, RETR's size), which are in no table. A text with no translation stays English.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from popbox.auth.base import Verdict
from popbox.proto.events import Err, Ok, Problem
from popbox.proto.types import RespCode
from popbox.store.base import Failure

AUTH_FAILED = Err("Authentication failed.", RespCode.AUTH)
CLEARTEXT_REFUSED = Err(
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", RespCode.AUTH
)
APOP_DISABLED = Err("APOP is not enabled on this server.", RespCode.AUTH)
UNKNOWN_MECHANISM = Err("Unsupported authentication mechanism.")
AUTH_CANCELLED = Err("Authentication cancelled.")
POP3_DISABLED = Err("POP3 access is disabled for this account.", RespCode.AUTH)
LOGIN_DELAY = Err("Logged in too recently, try again later.", RespCode.LOGIN_DELAY)
NO_SUCH_MESSAGE = Err("There is no such message.")
ALREADY_DELETED = Err("Message is deleted.")
TOO_MANY_ERRORS = Err("Too many invalid commands, closing.")
IDLE_TIMEOUT = Err("Disconnected for inactivity.")
TOO_MANY_USER_IP = Err("Too many sessions for this user from this address, try again later.",
                       RespCode.SYS_TEMP)
TOO_MANY_CONNECTIONS = Err("Too many connections, try again later.", RespCode.SYS_TEMP)
SHUTTING_DOWN = Err("Server shutting down.", RespCode.SYS_TEMP)
STLS_UNAVAILABLE = Err("STLS is not available on this server.")
ALREADY_SECURE = Err("TLS is already active.")
LANG_UNSUPPORTED = Err("Unsupported language.")
LANG_NEEDS_UTF8 = Err("This language needs UTF-8: send UTF8 first.")
XTND_UNSUPPORTED = Err("XTND is not supported by this server.")
MESSAGE_GONE = Err("Message was removed by another agent.", RespCode.SYS_PERM)
MESSAGE_CHANGED = Err("Message has changed since the session began.", RespCode.SYS_TEMP)


@dataclass(frozen=True, slots=True)
class Listing:
    """A multi-line answer (CAPA, LIST, UIDL, bare AUTH): sent as `Ok(text)`, `Lines`,
    `End` (RFC 1939 §3)."""

    text: str
    lines: tuple[str, ...]


def problem(p: Problem, verb: str) -> Err:
    match p:
        case Problem.UNKNOWN_COMMAND:
            return Err("Unknown command.")
        case Problem.WRONG_STATE:
            return Err(f"{verb} is not valid in this state.")
        case Problem.EMPTY_LINE:
            return Err("Empty command.")
        case Problem.LINE_TOO_LONG:
            return Err("Command line too long.")
        case Problem.BAD_MESSAGE_NUMBER:
            return Err("Invalid message number.")
        case Problem.BAD_BASE64:
            return Err("Invalid base64 data.")
        case Problem.PASS_WITHOUT_USER:
            return Err("No username given.")
        case Problem.BAD_CHARACTERS:
            return Err("Invalid characters in command.")
        case Problem.BAD_ARGUMENTS:
            return Err(f"Invalid arguments for {verb}." if verb else "Invalid arguments.")


def failure(f: Failure) -> Err:
    match f:
        case Failure.IN_USE:
            return Err("Mailbox is locked by another POP3 session.", RespCode.IN_USE)
        case Failure.TEMPORARY:
            return Err("Temporary failure, try again later.", RespCode.SYS_TEMP)
        case Failure.PERMANENT:
            return Err("Mailbox cannot be opened.", RespCode.SYS_PERM)
        case Failure.GONE:
            return MESSAGE_GONE
        case Failure.FULL:
            return Err("Mail storage is full, try again later.",
                       RespCode.SYS_TEMP)


def verdict(v: Verdict) -> Err:
    if v is Verdict.TEMPORARY:
        return Err("Temporary authentication failure.", RespCode.SYS_TEMP)
    return AUTH_FAILED


# --- languages (RFC 6856 §3) ---------------------------------------------------------

DEFAULT_LANGUAGE = "i-default"
LANGUAGES: dict[str, str] = {  # tag -> its name in itself, as LANG lists them
    "en": "English",
    "i-default": "Default language",
    "de": "Deutsch",
}

TRANSLATIONS: dict[str, dict[str, str]] = {
    "de": {
        "Authentication failed.": "Authentifizierung fehlgeschlagen.",
        "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.":
            "Klartext-Anmeldung ist nur über gesicherte (SSL/TLS) Verbindungen erlaubt.",
        "APOP is not enabled on this server.": "APOP ist auf diesem Server nicht aktiviert.",
        "Unsupported authentication mechanism.":
            "Dieses Anmeldeverfahren wird nicht unterstützt.",
        "Authentication cancelled.": "Anmeldung abgebrochen.",
        "POP3 access is disabled for this account.":
            "Der POP3-Zugang ist für dieses Konto gesperrt.",
        "Logged in too recently, try again later.":
            "Zu kurz nach der letzten Anmeldung, bitte später erneut versuchen.",
        "There is no such message.": "Diese Nachricht gibt es nicht.",
        "Message is deleted.": "Die Nachricht ist gelöscht.",
        "Too many invalid commands, closing.":
            "Zu viele ungültige Befehle, Verbindung wird beendet.",
        "Disconnected for inactivity.": "Wegen Inaktivität getrennt.",
        "Too many connections, try again later.":
            "Zu viele Verbindungen, bitte später erneut versuchen.",
        "Too many sessions for this user from this address, try again later.":
            "Zu viele Sitzungen dieses Benutzers von dieser Adresse, "
            "bitte später erneut versuchen.",
        "Server shutting down.": "Der Server wird heruntergefahren.",
        "STLS is not available on this server.": "STLS ist auf diesem Server nicht verfügbar.",
        "TLS is already active.": "TLS ist bereits aktiv.",
        "Message was removed by another agent.":
            "Die Nachricht wurde von einem anderen Programm entfernt.",
        "Message has changed since the session began.":
            "Die Nachricht hat sich seit Beginn der Sitzung geändert.",
        "Mail storage is full, try again later.":
            "Der Mailspeicher ist voll, bitte später erneut versuchen.",
        "XTND is not supported by this server.": "XTND wird von diesem Server nicht unterstützt.",
        "Unsupported language.": "Diese Sprache wird nicht unterstützt.",
        "Unknown command.": "Unbekannter Befehl.",
        "{} is not valid in this state.": "{} ist in diesem Zustand nicht erlaubt.",
        "Empty command.": "Leerer Befehl.",
        "Command line too long.": "Befehlszeile zu lang.",
        "Invalid message number.": "Ungültige Nachrichtennummer.",
        "Invalid base64 data.": "Ungültige Base64-Daten.",
        "No username given.": "Kein Benutzername angegeben.",
        "Invalid characters in command.": "Ungültige Zeichen im Befehl.",
        "Invalid arguments for {}.": "Ungültige Argumente für {}.",
        "Invalid arguments.": "Ungültige Argumente.",
        "Mailbox is locked by another POP3 session.":
            "Das Postfach ist durch eine andere POP3-Sitzung gesperrt.",
        "Temporary failure, try again later.":
            "Vorübergehender Fehler, bitte später erneut versuchen.",
        "Mailbox cannot be opened.": "Das Postfach kann nicht geöffnet werden.",
        "Temporary authentication failure.": "Vorübergehender Fehler bei der Anmeldung.",
        "Logging out.": "Abmeldung.",
        "Language changed.": "Sprache geändert.",
        "Message {} deleted.": "Nachricht {} gelöscht.",
    },
}


def _templates(table: dict[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for english, translated in table.items():
        if english.count("{}") == 1:
            prefix, _, suffix = english.partition("{}")
            found.append((prefix, suffix, translated))
    return found


_TEMPLATES = {lang: _templates(table) for lang, table in TRANSLATIONS.items()}


def translate(text: str, lang: str) -> str:
    """`text` in `lang`, or `text` itself where the table has nothing."""
    table = TRANSLATIONS.get(lang)
    if table is None or not text:
        return text
    found = table.get(text)
    if found is not None:
        return found
    for prefix, suffix, translated in _TEMPLATES[lang]:
        if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix + suffix):
            middle = text[len(prefix) : len(text) - len(suffix)]
            if " " not in middle:
                return translated.replace("{}", middle)
    return text


def localize(reply: Err | Ok | Listing, lang: str) -> Err | Ok | Listing:
    """`reply` with its human-readable text in `lang` (codes and listings unchanged)."""
    if lang not in TRANSLATIONS:
        return reply
    text = translate(reply.text, lang)
    return reply if text == reply.text else dataclasses.replace(reply, text=text)


def choose_language(tag: str) -> str | None:
    """The language LANG `tag` selects (RFC 6856 §3): "*" is the default; a tag is
    matched without regard to case, else by its primary subtag ("de-AT" gives "de")."""
    if tag == "*":
        return DEFAULT_LANGUAGE
    wanted = tag.lower()
    if wanted in LANGUAGES:
        return wanted
    primary = wanted.partition("-")[0]
    return primary if primary in LANGUAGES and primary != "i" else None


def language_is_ascii(lang: str) -> bool:
    return all(text.isascii() for text in TRANSLATIONS.get(lang, {}).values())


def language_listing() -> Listing:
    return Listing("Language listing follows", tuple(f"{tag} {name}"
                                                     for tag, name in LANGUAGES.items()))
