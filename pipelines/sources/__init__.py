"""Data sources. Each yields impressions and labels in the event model of ``pipelines.events``.

* ``generator``   — seeded synthetic CTR stream with drift, delayed labels and dirt;
* ``talkingdata`` — real ad clicks with delayed conversions (../shared/data/talkingdata);
* ``elec2``       — real concept-drift stream (../shared/data/elec2);
* ``files``       — a user's own JSONL / CSV / Parquet event files.
"""
