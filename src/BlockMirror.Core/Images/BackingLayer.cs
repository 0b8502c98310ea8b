namespace BlockMirror.Core.Images;

/// <summary>One image of a node's backing chain: its path relative to the image root and its format.</summary>
public sealed record BackingLayer(string Path, string Format)
{
    /// <summary>The chain under <paramref name="image"/>, nearest first (empty for an image without backing), with paths relative to <paramref name="root"/>.</summary>
    public static IReadOnlyList<BackingLayer> ChainOf(IBlockImage image, ImageRoot root)
    {
        var chain = new List<BackingLayer>();
        while (image is ILayeredImage { Backing: { } below })
        {
            var path = System.IO.Path.IsPathRooted(below.Location) ? root.ToRelative(below.Location) : below.Location;
            chain.Add(new BackingLayer(path, below is ILayeredImage layered ? layered.Format : "raw"));
            image = below;
        }
        return chain;
    }
}
