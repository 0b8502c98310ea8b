using BlockMirror.Interop.Tests.Nbd;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// A fact that makes network namespaces (<c>ip netns</c>, root only): skipped, saying why, where
/// this process may not (not root, no iproute2, a container without CAP_SYS_ADMIN), unless
/// BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), where it runs and fails. Decided once, at discovery, by
/// making and removing a probe namespace.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Interop.Tests")]
public sealed class NetnsFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Refusal = new(Probe);

    public NetnsFactAttribute()
    {
        if (Refusal.Value is { } reason && !InteropTools.Required)
            Skip = "needs network namespaces: " + reason + " (BLOCKMIRROR_REQUIRE_INTEROP=1 makes it a failure)";
    }

    private static string? Probe()
    {
        if (Environment.UserName != "root")
            return "not root";
        if (InteropTools.Find("ip") is null)
            return "ip not installed (apt-get install iproute2)";
        if (!TestCertificates.Available)
            return "openssl not installed";
        var name = "bm-probe-" + Environment.ProcessId;
        try
        {
            NetworkNamespaces.Run("ip", "netns", "add", name);
            NetworkNamespaces.Run("ip", "netns", "del", name);
            return null;
        }
        catch (InvalidOperationException e)
        {
            return e.Message;
        }
    }
}
