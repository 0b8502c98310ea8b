using System.Diagnostics;

namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// Two network namespaces joined by a veth pair (<see cref="AddressA"/> in the first,
/// <see cref="AddressB"/> in the second), each with its loopback up: two hosts on one machine, as
/// far as TCP can tell. Removed (with the pair) when disposed.
/// </summary>
internal sealed class NetworkNamespaces : IDisposable
{
    public const string AddressA = "10.78.0.1";
    public const string AddressB = "10.78.0.2";

    public NetworkNamespaces()
    {
        var tag = Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        A = "bm-a-" + tag;
        B = "bm-b-" + tag;
        var vethA = VethA = "bmva" + tag;
        var vethB = VethB = "bmvb" + tag;
        Dispose();
        Run("ip", "netns", "add", A);
        Run("ip", "netns", "add", B);
        Run("ip", "link", "add", vethA, "netns", A, "type", "veth", "peer", "name", vethB, "netns", B);
        Run("ip", "-n", A, "addr", "add", AddressA + "/24", "dev", vethA);
        Run("ip", "-n", B, "addr", "add", AddressB + "/24", "dev", vethB);
        foreach (var (ns, dev) in new[] { (A, vethA), (B, vethB), (A, "lo"), (B, "lo") })
            Run("ip", "-n", ns, "link", "set", dev, "up");
    }

    /// <summary>The first host's namespace.</summary>
    public string A { get; }

    /// <summary>The second host's namespace.</summary>
    public string B { get; }

    /// <summary>The first host's end of the link (in <see cref="A"/>).</summary>
    public string VethA { get; }

    /// <summary>The second host's end of the link (in <see cref="B"/>).</summary>
    public string VethB { get; }

    /// <summary>Removing a namespace removes the veth end in it, and with it its peer.</summary>
    public void Dispose()
    {
        foreach (var ns in new[] { A, B })
        {
            try
            {
                Run("ip", "netns", "del", ns);
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

    public static void Run(params string[] arguments)
    {
        var info = new ProcessStartInfo(arguments[0]) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in arguments.Skip(1))
            info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{string.Join(' ', arguments)}: {stderr.Trim()}");
    }
}
