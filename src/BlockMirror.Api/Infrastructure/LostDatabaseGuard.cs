using Microsoft.Data.Sqlite;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Refuses to start on a database that is missing, empty (0 bytes), not SQLite, or without
/// BlockMirror's tables while the bitmap journal's files beside it (<c>&lt;database&gt;.bitmaps.*</c>:
/// segments, the alive stamp) prove that a service ran on it. Migrating such a file would start an
/// empty service: every node and persistent bitmap silently gone, and the journal's start would
/// then delete the entries that are the only record of them. An operator decides instead: restore
/// the database from a backup, or remove the journal files to start empty on purpose.
/// </summary>
public static class LostDatabaseGuard
{
    /// <param name="databasePath">The SQLite file (null: in memory, nothing to check).</param>
    /// <param name="journalPrefix">The journal's path prefix (<see cref="ServiceRegistration.BitmapJournalPrefix"/>).</param>
    public static void Check(string? databasePath, string? journalPrefix)
    {
        if (databasePath is null || journalPrefix is null)
            return;
        var evidence = JournalFiles(journalPrefix);
        if (evidence.Count == 0)
            return;
        var problem = Problem(databasePath);
        if (problem is null)
            return;
        var shown = string.Join(", ", evidence.Take(3).Select(Path.GetFileName)) + (evidence.Count > 3 ? $" and {evidence.Count - 3} more" : "");
        throw new StartupRefusedException(ExitCodes.DataRefused,
            $"the database {databasePath} {problem}, but the bitmap journal beside it ({shown}) shows that a service ran on it: " +
            $"restore the database from a backup, or remove {Path.GetFileName(journalPrefix)}.* to start empty");
    }

    /// <summary>What is wrong with the database file, or null when it has BlockMirror's schema.</summary>
    private static string? Problem(string databasePath)
    {
        var file = new FileInfo(databasePath);
        if (!file.Exists)
            return "is missing";
        if (file.Length == 0)
            return "is empty (0 bytes)";
        try
        {
            // Read-only and unpooled: nothing is written and no connection outlives the check.
            using var connection = new SqliteConnection(new SqliteConnectionStringBuilder
            {
                DataSource = databasePath,
                Mode = SqliteOpenMode.ReadOnly,
                Pooling = false,
            }.ToString());
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '__EFMigrationsHistory'";
            return Convert.ToInt64(command.ExecuteScalar(), System.Globalization.CultureInfo.InvariantCulture) > 0 ? null : "has no BlockMirror tables";
        }
        catch (SqliteException e)
        {
            return $"cannot be read as a SQLite database ({e.Message})";
        }
    }

    private static List<string> JournalFiles(string journalPrefix)
    {
        var folder = Path.GetDirectoryName(journalPrefix)!;
        if (!Directory.Exists(folder))
            return [];
        return [.. Directory.EnumerateFiles(folder, Path.GetFileName(journalPrefix) + ".*").Order(StringComparer.Ordinal)];
    }
}
