namespace BlockMirror.Api.Tests;

/// <summary>Runs the metrics tests alone, after the parallel collections: no other test's service is alive to mix its series in.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MetricsCollection
{
    public const string Name = "Metrics";
}
