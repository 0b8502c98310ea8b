using System.Net;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Data.Sqlite;

namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// The real service in-process with its own temp folder (SQLite file + image root). A second
/// factory on the same <see cref="DataDir"/> is the same service restarted on the same database.
/// </summary>
public class BlockMirrorFactory : WebApplicationFactory<Program>
{
    private readonly bool _ownsDir;

    public BlockMirrorFactory(string? dataDir = null, IDictionary<string, string?>? settings = null)
    {
        _ownsDir = dataDir is null;
        DataDir = dataDir ?? Directory.CreateTempSubdirectory("blockmirror-tests-").FullName;
        Settings = settings ?? new Dictionary<string, string?>();
    }

    public string DataDir { get; }

    public string ImageRoot => Path.Combine(DataDir, "images");

    public IDictionary<string, string?> Settings { get; }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Testing");
        builder.UseSetting("ConnectionStrings:BlockMirror", $"Data Source={Path.Combine(DataDir, "blockmirror.db")}");
        builder.UseSetting("Storage:Root", ImageRoot);
        builder.UseSetting("Nbd:Listen", "");
        foreach (var (k, v) in Settings)
            builder.UseSetting(k, v);
    }

    /// <summary>Stops the host (clean stop) and, if this factory created it, deletes the folder.</summary>
    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        SqliteConnection.ClearAllPools();
        if (_ownsDir)
        {
            try
            {
                Directory.Delete(DataDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>Deletes a data folder shared by several factories (restart tests).</summary>
    public static void DeleteDir(string dir)
    {
        SqliteConnection.ClearAllPools();
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
