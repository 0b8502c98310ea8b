namespace BlockMirror.Core.Tests.Images;

/// <summary>A private temp directory for real image files, removed when the test ends.</summary>
public sealed class TempImageDirectory : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("blockmirror-images-");

    public string PathOf(string name) => Path.Combine(_dir.FullName, name);

    public void Dispose()
    {
        try
        {
            _dir.Delete(recursive: true);
        }
        catch (IOException)
        {
            // A leaked temp dir must not fail the test that already ran.
        }
    }
}
