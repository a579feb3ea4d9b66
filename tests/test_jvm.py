"""Our loopback ServerFactory (runners.jvm): compiled from source against the installed
flink-python jar, a binary drop-in for the class it shadows, first on the class path; our
line reader in a patched copy of flink-connector-files' jar."""
import subprocess

from runners import jvm

CLASSES = ["org.apache.beam.sdk.fn.server.ServerFactory",
           "org.apache.beam.sdk.fn.server.ServerFactory$UrlFactory",
           "org.apache.beam.sdk.fn.server.ServerFactory$InetSocketAddressServerFactory"]


def _public_members(jar, cls: str) -> set[str]:
    out = subprocess.run(["javap", "-public", "-cp", str(jar), cls], capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines()[2:] if line.strip() not in ("}", "")}


def test_our_server_factory_has_every_public_member_of_flinks(tmp_path):
    """Flink's callers link against the stock class: a member we lack would fail at run time
    (NoSuchMethodError), so a Flink upgrade that adds one fails here first."""
    ours = jvm.patch_jar(cache=tmp_path)
    for cls in CLASSES:
        stock = _public_members(jvm.flink_python_jar(), cls)
        assert stock and stock <= _public_members(ours, cls), (cls, stock - _public_members(ours, cls))


def test_our_line_reader_replaces_flinks_with_every_public_member(tmp_path):
    """Our DeserializationSchemaAdapter (tests/test_file_source.py) goes into a copy of
    flink-connector-files' jar, under that jar's name in the lib folders, instead of Flink's
    (class-path order is not ours to choose locally); it keeps every public member."""
    cls = "org.apache.flink.connector.file.table.DeserializationSchemaAdapter"
    stock = next(p for n, p in jvm._lib_jars().items() if n.startswith("flink-connector-files"))
    patched = jvm.patched_jars(cache=tmp_path)[stock.name]
    theirs = _public_members(stock, cls)
    assert theirs and theirs <= _public_members(patched, cls), theirs - _public_members(patched, cls)
    ours = jvm.patch_jar(cache=tmp_path)
    assert subprocess.run(["javap", "-cp", str(ours), cls], capture_output=True).returncode != 0  # only in the copy
    for lib in (jvm.lib_dir(cache=tmp_path), jvm.lib_dir(with_flink_python=True, cache=tmp_path)):
        assert (lib / stock.name).resolve() == patched.resolve()


def test_the_lib_folder_puts_our_jar_before_flink_python(tmp_path):
    """PyFlink's launcher and Flink's scripts put every lib jar before opt's flink-python jar;
    the cluster's lib also holds flink-python (sorted after ours), so operators and our class
    share one class loader."""
    local = jvm.lib_dir(cache=tmp_path)
    names = sorted(p.name for p in local.glob("*.jar"))
    assert jvm.patch_jar(cache=tmp_path).name in names and not any(n.startswith("flink-python") for n in names)
    assert all((local / n).resolve().exists() for n in names)
    names = sorted(p.name for p in jvm.lib_dir(with_flink_python=True, cache=tmp_path).glob("*.jar"))
    ours = jvm.patch_jar(cache=tmp_path).name
    assert names.index(ours) < names.index(jvm.flink_python_jar().name)
    assert jvm.lib_dir(cache=tmp_path) == local  # idempotent: the same folder, links unchanged


PROBE = r'''
import java.io.PrintStream;

public class Probe {
  public static void main(String[] args) throws Exception {
    Object[] values = {"plain", "quo\"te", "back\\slash", "new\nline\ttab", "ctl\u0001\u001f", "é☃",
        "\uD834\uDD1E", "", null, 1.5, 1e-7, -0.0, 1e300, 0.1 + 0.2, 123456789012345L, 42L,
        Double.NaN, Double.POSITIVE_INFINITY};
    new PrintStream(System.out, true, "UTF-8").println(driftline.flink.Json.array(values));
  }
}
'''


def test_the_joins_inputs_array_reads_back_in_python(tmp_path):
    """DedupJoin writes a pending impression's inputs as a JSON array in Java (Json.array); the
    Learner reads it with Python's json (``transforms.apply.parse_inputs``) and must get the
    same values: escapes, non-ASCII, nulls, doubles exactly (Double.toString round-trips),
    longs, NaN and infinities."""
    import json
    import math

    from transforms.apply import parse_inputs

    (tmp_path / "Probe.java").write_text(PROBE, encoding="utf-8")
    cp = f"{jvm.lib_dir(cache=tmp_path)}/*"
    subprocess.run(["javac", "-encoding", "UTF-8", "-cp", cp, "-d", str(tmp_path), str(tmp_path / "Probe.java")],
                   check=True, capture_output=True)
    out = subprocess.run(["java", "-cp", f"{cp}:{tmp_path}", "Probe"], check=True, capture_output=True).stdout
    got = parse_inputs([out.decode("utf-8").strip()])[0]
    want = ["plain", 'quo"te', "back\\slash", "new\nline\ttab", "ctl\x01\x1f", "é☃", "\U0001d11e", "", None,
            1.5, 1e-7, -0.0, 1e300, 0.1 + 0.2, 123456789012345, 42]
    assert got[:len(want)] == want and json.dumps(got[:len(want)]) == json.dumps(want)
    assert math.copysign(1.0, got[11]) == -1.0
    assert math.isnan(got[16]) and got[17] == math.inf
