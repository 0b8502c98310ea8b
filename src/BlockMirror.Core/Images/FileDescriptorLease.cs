using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.Images;

/// <summary>
/// The raw fd of a <see cref="SafeFileHandle"/>, held with DangerousAddRef for the duration of a
/// syscall so a concurrent Dispose cannot close the fd (and the number be reused by another open)
/// under us. Dispose on a closed handle throws ObjectDisposedException at lease time instead.
/// </summary>
internal readonly ref struct FileDescriptorLease
{
    private readonly SafeFileHandle _handle;

    public FileDescriptorLease(SafeFileHandle handle)
    {
        var added = false;
        handle.DangerousAddRef(ref added);
        _handle = handle;
        Fd = (int)handle.DangerousGetHandle();
    }

    public int Fd { get; }

    public void Dispose() => _handle.DangerousRelease();
}
