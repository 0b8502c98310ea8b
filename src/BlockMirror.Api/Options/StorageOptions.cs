namespace BlockMirror.Api.Options;

/// <summary>Where images live (<c>Storage</c> section).</summary>
public sealed class StorageOptions
{
    public const string Section = "Storage";

    /// <summary>The image root; every node path is relative to it. Relative values resolve against the content root.</summary>
    public string Root { get; set; } = "./data/images";

    /// <summary>Largest body accepted by PUT /nodes/{node}/data, in bytes.</summary>
    public long MaxDataBodyBytes { get; set; } = 64L << 20;
}
