namespace BlockMirror.Core.Images;

/// <summary>
/// A change to an image that bypasses <see cref="DirectIo.WriteAsync"/> (fallocate, an ioctl,
/// copy_file_range), registered with the direct image's tracked writes for as long as it runs;
/// empty on a buffered image, where nothing is tracked. Disposing it ends the registration.
/// </summary>
internal readonly struct OtherWriteScope : IDisposable
{
    private readonly DirectIo? _direct;
    private readonly TrackedWrite? _write;

    private OtherWriteScope(DirectIo direct, TrackedWrite write)
    {
        _direct = direct;
        _write = write;
    }

    /// <summary>Registers [offset, +length) with <paramref name="direct"/>, or nothing when it is null.</summary>
    public static async ValueTask<OtherWriteScope> BeginAsync(DirectIo? direct, long offset, long length) =>
        direct is null ? default : new OtherWriteScope(direct, await direct.BeginOtherAsync(offset, length).ConfigureAwait(false));

    public void Dispose()
    {
        if (_write is not null)
            _direct!.EndOther(_write);
    }
}
