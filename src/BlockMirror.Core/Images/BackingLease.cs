namespace BlockMirror.Core.Images;

/// <summary>One image's share of a backing image (<see cref="BackingImages"/>); disposing gives it back once.</summary>
internal sealed class BackingLease(BackingImages owner, string full, IBlockImage image) : IAsyncDisposable
{
    private int _released;

    public IBlockImage Image { get; } = image;

    public string Format => BackingImages.FormatOf(Image);

    public ValueTask DisposeAsync() =>
        Interlocked.Exchange(ref _released, 1) == 0 ? owner.ReleaseAsync(full) : ValueTask.CompletedTask;
}
