namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Finds the directory holding the service's appsettings.json: next to the binary when published
/// (Docker), else the repository root above bin/. Relative paths in configuration (./data/...)
/// resolve against it, whatever the process's working directory is.
/// </summary>
public static class ContentRootLocator
{
    public static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "appsettings.json")))
                return dir.FullName;
        }
        return Directory.GetCurrentDirectory();
    }
}
