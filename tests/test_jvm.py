"""Our loopback ServerFactory (runners.jvm): compiled from source against the installed
flink-python jar, a binary drop-in for the class it shadows, first on the class path."""
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
