using System.Data.Common;
using BlockMirror.Api.Infrastructure;
using Microsoft.Data.Sqlite;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;

namespace BlockMirror.Api.Data;

/// <summary>
/// Reports every storage failure of the database (<see cref="StorageFailures"/>) to
/// <see cref="StorageHealth"/>, and every write that committed as its end, for all of the service's
/// database use at once: commands, commits and SaveChanges.
/// </summary>
public sealed class DatabaseFailureInterceptor(StorageHealth health) : DbCommandInterceptor, IDbTransactionInterceptor, ISaveChangesInterceptor
{
    public override void CommandFailed(DbCommand command, CommandErrorEventData eventData) => Failed(eventData.Exception, command.Connection);

    public override Task CommandFailedAsync(DbCommand command, CommandErrorEventData eventData, CancellationToken cancellationToken = default)
    {
        Failed(eventData.Exception, command.Connection);
        return Task.CompletedTask;
    }

    public void TransactionFailed(DbTransaction transaction, TransactionErrorEventData eventData) => Failed(eventData.Exception, transaction.Connection);

    public Task TransactionFailedAsync(DbTransaction transaction, TransactionErrorEventData eventData, CancellationToken cancellationToken = default)
    {
        Failed(eventData.Exception, transaction.Connection);
        return Task.CompletedTask;
    }

    public void TransactionCommitted(DbTransaction transaction, TransactionEndEventData eventData) => health.DatabaseWritten();

    public Task TransactionCommittedAsync(DbTransaction transaction, TransactionEndEventData eventData, CancellationToken cancellationToken = default)
    {
        health.DatabaseWritten();
        return Task.CompletedTask;
    }

    public void SaveChangesFailed(DbContextErrorEventData eventData) => Failed(eventData.Exception, eventData.Context?.Database.GetDbConnection());

    public Task SaveChangesFailedAsync(DbContextErrorEventData eventData, CancellationToken cancellationToken = default)
    {
        Failed(eventData.Exception, eventData.Context?.Database.GetDbConnection());
        return Task.CompletedTask;
    }

    /// <summary>Outside an explicit transaction a save that wrote rows committed them; inside one, its commit (or failure) follows.</summary>
    public int SavedChanges(SaveChangesCompletedEventData eventData, int result)
    {
        Written(eventData, result);
        return result;
    }

    public ValueTask<int> SavedChangesAsync(SaveChangesCompletedEventData eventData, int result, CancellationToken cancellationToken = default)
    {
        Written(eventData, result);
        return ValueTask.FromResult(result);
    }

    private void Written(SaveChangesCompletedEventData eventData, int result)
    {
        if (result > 0 && eventData.Context?.Database.CurrentTransaction is null)
            health.DatabaseWritten();
    }

    /// <summary>
    /// Records a storage failure and empties the connection pool: SQLite opens a database it may not
    /// write read-only without a word, and such a pooled connection would refuse every write for good
    /// after the database became writable again.
    /// </summary>
    private void Failed(Exception exception, DbConnection? connection)
    {
        if (!StorageFailures.IsStorageFailure(exception))
            return;
        health.DatabaseFailed(exception);
        if (connection is SqliteConnection sqlite)
            SqliteConnection.ClearPool(sqlite);
    }
}
