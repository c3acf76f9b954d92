"""The console's words in French (the default) and English. A key missing in English falls back to French,
so a page never shows a bare key."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("fr", "en")
LANG_COOKIE = "jamu_console_lang"

_MESSAGES: dict[str, tuple[str, str]] = {
    "app": ("Console des agents de sécurité", "Security officers' console"),
    "skip": ("Aller au contenu", "Skip to content"),
    "nav": ("Navigation principale", "Main navigation"),
    "overview": ("Vue d'ensemble", "Overview"),
    "events": ("Événements", "Events"),
    "person": ("Personne", "Person"),
    "alerts": ("Alertes", "Alerts"),
    "integrity": ("Intégrité", "Integrity"),
    "logout": ("Se déconnecter", "Sign out"),
    "signed_in_as": ("Connecté :", "Signed in:"),
    "login_title": ("Connexion", "Sign in"),
    "login": ("Identifiant", "Login"),
    "password": ("Mot de passe", "Password"),
    "totp": ("Code à usage unique (6 chiffres)", "One-time code (6 digits)"),
    "sign_in": ("Se connecter", "Sign in"),
    "sign_in_oidc": ("Se connecter avec le fournisseur d'identité", "Sign in with the identity provider"),
    "login_failed": (
        "Identifiant, mot de passe ou code incorrect, ou compte verrouillé après cinq échecs : "
        "dans ce cas, réessayez dans 15 minutes.",
        "Wrong login, password or code, or an account locked after five failures: then try again in 15 minutes.",
    ),
    "login_throttled": (
        "Trop de tentatives depuis cette adresse : réessayez plus tard.",
        "Too many attempts from this address: try again later.",
    ),
    "csrf_failed": (
        "Le formulaire a expiré ; rechargez la page et recommencez.",
        "The form expired; reload the page and try again.",
    ),
    "oidc_failed": (
        "La connexion par le fournisseur d'identité a échoué.",
        "Sign-in with the identity provider failed.",
    ),
    "session_expired": ("Votre session a expiré.", "Your session expired."),
    "volumes_24h": ("Volumes par administration, 24 dernières heures", "Volumes per administration, last 24 hours"),
    "volumes_7d": ("Volumes par administration, 7 derniers jours", "Volumes per administration, last 7 days"),
    "deny_rates": ("Taux de refus par administration", "Deny rate per administration"),
    "unknown_rates": (
        "Taux de NIN inconnus ou suspendus par administration",
        "Unknown or suspended NIN rate per administration",
    ),
    "last_24h": ("24 h", "24 h"),
    "last_7d": ("7 jours", "7 days"),
    "administration": ("Administration", "Administration"),
    "volume": ("Volume", "Volume"),
    "deny_rate": ("Taux de refus", "Deny rate"),
    "unknown_rate": ("Taux de NIN inconnus", "Unknown NIN rate"),
    "figures_table": ("Les mêmes chiffres en tableau", "The same figures as a table"),
    "log_health": ("Santé du journal", "Log health"),
    "last_checkpoint": ("Dernier point de contrôle signé", "Last signed checkpoint"),
    "witnesses": ("Témoins", "Witnesses"),
    "index_lag": ("Retard de l'index", "Index lag"),
    "open_alerts": ("Alertes ouvertes", "Open alerts"),
    "none": ("Aucune", "None"),
    "no_events": ("Aucun événement.", "No events."),
    "filters": ("Filtres", "Filters"),
    "client": ("Client", "Client"),
    "operation": ("Opération", "Operation"),
    "decision": ("Décision", "Decision"),
    "purpose": ("Finalité", "Purpose"),
    "since": ("Depuis (UTC)", "Since (UTC)"),
    "until": ("Jusqu'à (UTC)", "Until (UTC)"),
    "any": ("Toutes", "Any"),
    "search": ("Rechercher", "Search"),
    "next_page": ("Page suivante", "Next page"),
    "export_csv": ("Exporter en CSV", "Export as CSV"),
    "export_jsonl": ("Exporter en JSONL", "Export as JSONL"),
    "time": ("Heure (UTC)", "Time (UTC)"),
    "transaction": ("Transaction", "Transaction"),
    "reason": ("Motif", "Reason"),
    "status": ("Statut", "Status"),
    "nin": ("NIN de la personne", "The person's NIN"),
    "search_reason": ("Motif de la recherche (consigné au journal)", "Reason for the search (written to the log)"),
    "person_help": (
        "Le NIN n'apparaît jamais dans une adresse ni dans l'historique du navigateur.",
        "The NIN never appears in an address or the browser's history.",
    ),
    "person_results": ("Accès au dossier de cette personne", "Accesses to this person's record"),
    "invalid_nin": (
        "Ce n'est pas un NIN : 6 à 32 chiffres ou lettres majuscules.",
        "Not a NIN: 6 to 32 digits or capital letters.",
    ),
    "reason_required": ("Indiquez un motif (3 à 500 caractères).", "Give a reason (3 to 500 characters)."),
    "reason_has_nin": (
        "Le motif est consigné au journal : n'y écrivez pas de numéro d'identité.",
        "The reason is written to the log: do not put an identity number in it.",
    ),
    "event_detail": ("Détail de l'événement", "Event detail"),
    "inclusion_proof": ("Preuve d'inclusion", "Inclusion proof"),
    "proof_ok": (
        "Vérifiée : l'événement figure dans l'arbre signé de taille {size}.",
        "Checked: the event is in the signed tree of size {size}.",
    ),
    "proof_pending": (
        "Pas encore couvert par un point de contrôle signé ; réessayez dans un instant.",
        "Not yet covered by a signed checkpoint; try again in a moment.",
    ),
    "proof_elsewhere": (
        "Cet événement est dans le journal d'une autre instance : sa preuve se lit là-bas "
        "(GET /v1/audit/proof/inclusion).",
        "This event is in another instance's log: its proof is read there (GET /v1/audit/proof/inclusion).",
    ),
    "proof_failed": (
        "ÉCHEC : le journal ne correspond pas à son arbre signé ici.",
        "FAILED: the log does not match its signed tree here.",
    ),
    "not_found": ("Introuvable.", "Not found."),
    "forbidden": ("Votre rôle ne permet pas de voir ceci.", "Your role does not allow you to see this."),
    "bad_request": ("Requête invalide.", "Invalid request."),
    "export_busy": (
        "Un export est déjà en cours (un par agent, deux en tout) : réessayez quand il est fini.",
        "An export is already running (one per officer, two in all): try again when it ends.",
    ),
    "conflict": (
        "Cette alerte a changé entre-temps (close par quelqu'un d'autre ?) : rechargez-la.",
        "This alert changed meanwhile (closed by someone else?): reload it.",
    ),
    "unavailable": (
        "Le journal d'accès est indisponible ; rien n'est affiché.",
        "The access log is unavailable; nothing is shown.",
    ),
    "rule": ("Règle", "Rule"),
    "key": ("Objet", "Subject"),
    "first_seen": ("Première", "First"),
    "last_seen": ("Dernière", "Last"),
    "figures": ("Chiffres", "Figures"),
    "alert_events": ("Événements en cause", "Events involved"),
    "note": ("Note (obligatoire)", "Note (required)"),
    "acknowledge": ("Prendre en compte", "Acknowledge"),
    "close": ("Clore", "Close"),
    "note_required": ("Une note est obligatoire (3 à 2000 caractères).", "A note is required (3 to 2000 characters)."),
    "history": ("Historique", "History"),
    "show_closed": ("Voir aussi les alertes closes", "Show closed alerts too"),
    "integrity_ok": ("Le chaînage et les points de contrôle tiennent.", "The chain and the checkpoints hold."),
    "integrity_bad": ("Problèmes détectés", "Problems found"),
    "events_checked": ("Événements vérifiés", "Events checked"),
    "integrity_running": (
        "Vérification du journal en cours ; rechargez la page pour le nouveau rapport.",
        "The log is being checked; reload the page for the new report.",
    ),
    "integrity_failed": ("La dernière vérification n'a pas pu aboutir.", "The last check could not finish."),
    "integrity_checked_at": ("Rapport du", "Report of"),
    "origin": ("Origine", "Origin"),
    "tree_size": ("Taille de l'arbre", "Tree size"),
    "unsealed": ("Non encore scellés", "Not yet sealed"),
    "language": ("Langue", "Language"),
    "rule.enumeration": ("Énumération", "Enumeration"),
    "rule.scraping": ("Aspiration", "Scraping"),
    "rule.predicate_probing": ("Sondage par prédicats", "Predicate probing"),
    "rule.token_failures": ("Échecs de jeton", "Token failures"),
    "rule.consent_refusals": ("Refus de consentement", "Consent refusals"),
    "rule.history_quota": ("Quota d'historique dépassé", "History quota exceeded"),
    "figure.checks": ("vérifications", "checks"),
    "figure.unknown": ("NIN inconnus ou suspendus", "unknown or suspended NINs"),
    "figure.share": ("part", "share"),
    "figure.window_s": ("fenêtre (s)", "window (s)"),
    "figure.threshold": ("seuil", "threshold"),
    "figure.predicate_only_checks": ("vérifications sans attribut", "predicate-only checks"),
    "figure.failures": ("échecs", "failures"),
    "figure.refusals": ("refus", "refusals"),
    "figure.refused_reads": ("lectures refusées", "refused reads"),
    "figure.distinct_persons": ("personnes distinctes dans l'heure", "distinct persons this hour"),
    "figure.baseline_per_hour": ("habitude du client (par heure)", "the client's baseline (per hour)"),
    "figure.baseline_hours": ("heures d'historique", "hours of history"),
    "figure.factor": ("facteur", "factor"),
    "figure.min_persons": ("minimum de personnes", "minimum persons"),
    "status.open": ("ouverte", "open"),
    "status.acknowledged": ("prise en compte", "acknowledged"),
    "status.closed": ("close", "closed"),
}


def pick(query_lang: str | None, cookie_lang: str | None, accept_language: str | None) -> str:
    """`?lang=` first, then the remembered choice, then the browser's first supported language; French."""
    for choice in (query_lang, cookie_lang):
        if choice in LANGUAGES:
            return choice
    best, weight = "fr", 0.0
    for part in (accept_language or "").split(",")[:20]:  # by the browser's own weights (q), first wins a tie
        tag, _, params = part.strip().partition(";")
        try:
            q = float(params.strip()[2:]) if params.strip().startswith("q=") else 1.0
        except ValueError:
            continue
        if tag.strip().lower()[:2] in LANGUAGES and q > weight:
            best, weight = tag.strip().lower()[:2], q
    return best


def translator(lang: str) -> Callable[..., str]:
    at = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def t(key: str, **values: object) -> str:
        pair = _MESSAGES.get(key)
        text = key if pair is None else (pair[at] or pair[0])
        return text.format(**values) if values else text

    return t
