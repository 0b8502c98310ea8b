namespace BlockMirror.Interop.Tests.TwoHosts;

/// <summary>
/// The two-host tests run one after the other: each makes the same two namespaces (named by the
/// process id) with the same addresses, and each runs two services on a machine that may have two cores.
/// </summary>
[CollectionDefinition(Name)]
public sealed class TwoHostsCollection
{
    public const string Name = "two hosts";
}
