namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// A slow link between the two namespaces: a queueing discipline on both ends of the veth pair, so
/// each direction (the mirror's writes to B, B's replies to A) is shaped. The link is
/// <c>netem delay 20ms rate 100mbit loss 0.1%</c>; a kernel built without sch_netem
/// (CONFIG_NET_SCH_NETEM unset, as on the machines this runs on today) refuses that with "Specified
/// qdisc kind is unknown", and the link is then shaped by <c>tbf</c> to the same 100 Mbit/s
/// without delay or loss: the rate, which is what makes a copy slower than a writer, is kept, and
/// <see cref="Description"/> says which of the two the test ran over.
/// </summary>
internal sealed class SlowLink
{
    private static readonly string[] Netem = ["netem", "delay", "20ms", "rate", "100mbit", "loss", "0.1%"];

    // burst: at least rate/HZ (12.5 KB at 1000 Hz) or tbf cannot send at its rate; latency bounds its queue.
    private static readonly string[] Tbf = ["tbf", "rate", "100mbit", "burst", "64kb", "latency", "50ms"];

    private SlowLink(string description) => Description = description;

    /// <summary>The discipline the link runs under, as given to <c>tc</c>.</summary>
    public string Description { get; }

    /// <summary>Shapes both ends of <paramref name="net"/>'s link: netem where the kernel has it, tbf otherwise.</summary>
    public static SlowLink Shape(NetworkNamespaces net)
    {
        string[] discipline;
        try
        {
            Add(net.A, net.VethA, Netem);
            discipline = Netem;
        }
        catch (InvalidOperationException e) when (e.Message.Contains("qdisc kind is unknown", StringComparison.Ordinal))
        {
            Add(net.A, net.VethA, Tbf);
            discipline = Tbf;
        }
        Add(net.B, net.VethB, discipline);
        return new SlowLink(string.Join(' ', discipline));
    }

    private static void Add(string netns, string device, string[] discipline) =>
        NetworkNamespaces.Run(["tc", "-n", netns, "qdisc", "add", "dev", device, "root", .. discipline]);
}
