namespace BlockMirror.Core.Images;

/// <summary>
/// The failures of opening an image file as codes, told by errno (never by message text), as the raw
/// driver tells them: the qcow2 driver opens its image and backing files the same way.
/// </summary>
internal static class HostErrors
{
    public static T Map<T>(string path, Func<T> open)
    {
        try
        {
            return open();
        }
        catch (FileNotFoundException)
        {
            throw NotFound(path);
        }
        catch (UnauthorizedAccessException e)
        {
            throw BlockErrors.Conflict("image-not-accessible", $"Could not open '{path}': {e.Message}");
        }
        catch (IOException e) when (e is PathTooLongException || e.HResult is LibC.EEXIST or LibC.ENOENT or LibC.ENOTDIR or LibC.ENAMETOOLONG or LibC.ELOOP or LibC.EISDIR)
        {
            throw e.HResult switch
            {
                LibC.EEXIST => BlockErrors.Conflict("image-exists", $"Image '{path}' already exists"),
                LibC.ENOENT => NotFound(path),
                _ => BlockErrors.Invalid("invalid-path", $"Could not open '{path}': {e.Message}"),
            };
        }
    }

    public static BlockException NotFound(string path) =>
        BlockErrors.NotFound("image-not-found", $"Could not open '{path}': No such file or directory");
}
