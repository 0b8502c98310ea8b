using BlockMirror.Core.State;
using Microsoft.Data.Sqlite;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Tells the failures of the service's own storage (the database cannot be written or read, the
/// bitmap journal cannot be written) from everything else. The one place that decides what is
/// answered 503 <c>storage-unavailable</c> and what makes <c>/healthz</c> unhealthy.
/// </summary>
public static class StorageFailures
{
    // SQLite's primary result codes that say the database file or its folder is the problem, not the request.
    private const int SqlitePerm = 3;
    private const int SqliteBusy = 5;
    private const int SqliteLocked = 6;
    private const int SqliteNoMem = 7;
    private const int SqliteReadOnly = 8;
    private const int SqliteIoErr = 10;
    private const int SqliteCorrupt = 11;
    private const int SqliteFull = 13;
    private const int SqliteCantOpen = 14;
    private const int SqliteProtocol = 15;
    private const int SqliteNotADb = 26;

    /// <summary>True when <paramref name="exception"/>, or one it wraps (EF Core's DbUpdateException wraps SQLite's), is a storage failure.</summary>
    public static bool IsStorageFailure(Exception exception)
    {
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            if (e is BitmapJournalException)
                return true;
            if (e is SqliteException sqlite && IsStorageCode(sqlite.SqliteErrorCode))
                return true;
        }
        return false;
    }

    /// <summary>
    /// Which storage failed and why, in one sentence: SQLite's or the journal's own message (EF Core's
    /// "An error occurred while saving the entity changes" says nothing).
    /// </summary>
    public static string Describe(Exception exception)
    {
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            if (e is BitmapJournalException journal)
                return journal.Message;
            if (e is SqliteException sqlite)
                return $"The database cannot be written: {sqlite.Message}";
        }
        return exception.Message;
    }

    private static bool IsStorageCode(int code) =>
        (code & 0xFF) is SqlitePerm or SqliteBusy or SqliteLocked or SqliteNoMem or SqliteReadOnly or SqliteIoErr
            or SqliteCorrupt or SqliteFull or SqliteCantOpen or SqliteProtocol or SqliteNotADb;
}
