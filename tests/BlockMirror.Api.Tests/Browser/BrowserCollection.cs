namespace BlockMirror.Api.Tests.Browser;

/// <summary>Browser tests share one Chromium and run one at a time: each drives a live, timing-sensitive page.</summary>
[CollectionDefinition(Name)]
public sealed class BrowserCollection : ICollectionFixture<ChromiumFixture>
{
    public const string Name = "Browser";
}
