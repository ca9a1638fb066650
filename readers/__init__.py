"""Readers of the real datasets, in their original formats, into one canonical click stream.

Every dataset becomes clicks (`ClickEvent`: session or user id as `session_id`, external item id
as a string, epoch milliseconds) in timestamp order. The lower-level readers return columns
(`ClickLog`, `Sequences`) and keep what a split needs (Grocery's given negatives, Diginetica's
given train/test split); `batch_training.splits` builds the splits from them.

Modules: `columns` (ClickLog, Sequences), `parsing` (DatasetFormatError, shared line parsing),
`paths` (names, files, the datasets folder), one per format (`movielens`, `user_lines`,
`amazon`, `diginetica`), `registry` (any dataset by name) and `files` (generic CSV/TSV/Parquet).
The package imports only `schemas` (and numpy; pyarrow for Parquet).

Datasets (folders under `datasets_root()`, every file gzip-compressed):

- `movielens-100k`: `u.data`, tab-separated `user item rating timestamp` (Unix seconds). The
  user is the session. Order: a stable sort by timestamp, so ties keep the file order.
- `movielens-1m`: `user_sequences.txt`, one line per user `user item item ...`, oldest first.
- `amazon-grocery`: ReChorus' `train.csv`/`dev.csv`/`test.csv` (tab-separated, header, time in
  Unix seconds at day resolution; dev/test rows carry 99 negatives). A user's sequence is their
  train rows in file order, then the dev row, then the test row.
- `yelp`: `Yelp.txt`, one line per user `user item item ...`, oldest first.
- `diginetica`: the SR-GNN split: `train_sessions.txt` (one session per line) and
  `test_prefix_label.tsv` (`prefix<TAB>label`; a test session of length n gives n-1 lines from the
  longest prefix down; the session is the longest prefix plus its label).
- `diginetica-sample`: the raw log excerpt `sample_train-item-views.csv`, `;`-separated with
  header `session_id;user_id;item_id;timeframe;eventdate`; the click time is midnight UTC of
  `eventdate` plus `timeframe` milliseconds; `user_id` NA means anonymous.

Ties in time are broken by session (the dataset's session order: user id for user sequences,
file order for Diginetica sessions, numeric session id for the Diginetica sample) and then by
the position inside the session, so the order is deterministic and every session keeps its own
click order. MovieLens-100K alone uses the plain stable sort by timestamp (file order on ties),
which gives every user the same order as sorting that user's ratings stably.

Synthetic timestamps, where the data has none (they only preserve order):

- `movielens-1m`, `yelp`: position k (0-based) of every user's sequence is at
  `SYNTHETIC_BASE_MS` (2020-01-01T00:00:00Z) + k seconds. All users start together, so the
  stream interleaves them like concurrent sessions; only the order inside a user is meaningful.
- `diginetica` (SR-GNN split): click k of a session is at the session start + k seconds.
  Training session i (0-based, file order) starts at `DIGINETICA_BASE_MS` (2016-01-01T00:00Z)
  + i * 67 s, so the 186,670 sessions end on 2016-05-24. Test session j starts at
  `test_start` + j * 37 s, where `test_start` is midnight UTC one full day after the day of the
  last training click (2016-05-26T00:00Z for the full file); the test sessions then fill the
  last 6.84 days. Every test session starts after every training session, and a time-based
  split with a 7-day test window reproduces the given split exactly.
- `amazon-grocery` and the two raw logs have real timestamps (seconds -> ms).

Generic files (`files.read_event_file`): CSV/TSV (optionally gzip) with a header, or Parquet when
pyarrow is installed (the `parquet` extra), with the three columns named by the caller.
"""
