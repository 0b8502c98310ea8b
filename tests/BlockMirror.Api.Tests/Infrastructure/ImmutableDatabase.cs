namespace BlockMirror.Api.Tests.Infrastructure;

/// <summary>
/// The service's database made unwritable (<c>chattr +i</c>) and writable again. Only the database
/// and its WAL: SQLite maps the -shm, where a write fault would be SIGBUS, not an error.
/// </summary>
public sealed class ImmutableDatabase(string dataFolder)
{
    private readonly List<string> _files = [];

    /// <summary>Every write to the database fails from now on, through descriptors already open too.</summary>
    public void Fail()
    {
        foreach (var file in new[] { "blockmirror.db", "blockmirror.db-wal" }.Select(f => Path.Combine(dataFolder, f)).Where(File.Exists))
            _files.Add(file);
        Chattr.SetImmutable(true, [.. _files]);
    }

    /// <summary>The database can be written again (nothing to do if it was never failed).</summary>
    public void Heal()
    {
        if (_files.Count == 0)
            return;
        Chattr.SetImmutable(false, [.. _files]);
        _files.Clear();
    }
}
