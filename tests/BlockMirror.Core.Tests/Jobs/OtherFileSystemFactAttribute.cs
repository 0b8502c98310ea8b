namespace BlockMirror.Core.Tests.Jobs;

/// <summary>
/// A fact that needs a writable directory on another file system than the temp directory (where
/// the test images live): /dev/shm, a tmpfs on every usual Linux. Skipped, saying why, where there
/// is none. Decided once, from the mount table.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
[Xunit.Sdk.XunitTestCaseDiscoverer("BlockMirror.Tests.Shared.ExplainedSkipFactDiscoverer", "BlockMirror.Core.Tests")]
public sealed class OtherFileSystemFactAttribute : FactAttribute
{
    public const string Directory = "/dev/shm";

    private static readonly Lazy<string?> Refusal = new(Probe);

    public OtherFileSystemFactAttribute()
    {
        if (Refusal.Value is { } reason)
            Skip = "needs a second file system: " + reason;
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
            return "not Linux";
        if (!System.IO.Directory.Exists(Directory))
            return Directory + " does not exist";
        // DriveInfo of a path is the mount it lies on (its Name is the mount point).
        var other = new DriveInfo(Directory);
        var temp = new DriveInfo(Path.GetTempPath());
        if (other.Name == temp.Name)
            return $"{Directory} and the temp directory are on one file system ({temp.Name})";
        var probe = Path.Combine(Directory, $"blockmirror-probe-{Guid.NewGuid():N}");
        try
        {
            File.WriteAllBytes(probe, [1]);
            File.Delete(probe);
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"{Directory} is not writable: {e.Message}";
        }
    }
}
