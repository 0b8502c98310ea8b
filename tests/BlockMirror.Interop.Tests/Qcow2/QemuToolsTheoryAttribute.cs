using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.Qcow2;

/// <summary>
/// A theory that needs qemu-img and qemu-io: skipped, naming the package, when they are missing —
/// unless BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), when it runs and fails on the missing tool.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class QemuToolsTheoryAttribute : TheoryAttribute
{
    public QemuToolsTheoryAttribute()
    {
        var missing = new[] { "qemu-img", "qemu-io" }.Where(t => InteropTools.Find(t) is null).ToList();
        if (missing.Count > 0 && !InteropTools.Required)
            Skip = InteropTools.MissingMessage(missing);
    }
}
