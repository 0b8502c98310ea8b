using System.Text.Json;
using BlockMirror.Api.Data;
using BlockMirror.Core.Jobs;

namespace BlockMirror.Api.Tests;

/// <summary>
/// The job snapshot's JSON in the database is the Api's own format (<see cref="StoredJobSnapshot"/>),
/// mapped from Core's <see cref="JobInfo"/>: it is what databases written before the mapping hold.
/// </summary>
public sealed class StoredJobSnapshotTests
{
    private static readonly DateTime Created = new(2026, 11, 30, 10, 0, 0, DateTimeKind.Utc);

    [Fact]
    public void A_snapshot_is_stored_as_the_json_of_the_job_info_was()
    {
        var info = new JobInfo("m0", "mirror", "concluded", "src", "dst", "full", "b0", "always", "write-blocking",
            65536, 16 << 20, 0, 100, 200, 100, 300, 5, 6, 7, false, false, true, "ok", "Input/output error",
            true, false, Created, Created.AddSeconds(5), Created.AddSeconds(6), "failed", null, Created.AddSeconds(2));

        var stored = EfJobStore.SerializeSnapshot(info);

        Assert.Equal(JsonSerializer.Serialize(info, new JsonSerializerOptions(JsonSerializerDefaults.Web)), stored);
        Assert.Equal(info, EfJobStore.DeserializeSnapshot(stored));
    }

    [Fact]
    public void A_snapshot_stored_before_outcomes_were_recorded_still_reads()
    {
        const string old = """
            {"id":"m0","type":"mirror","status":"concluded","device":"src","target":"dst","sync":"full","bitmap":null,
             "bitmapMode":null,"copyMode":"background","granularity":65536,"bufSize":16777216,"speed":0,
             "currentProgress":4096,"totalProgress":4096,"remaining":0,"bytesCopied":4096,"copyRate":0,"dirtyRate":0,
             "etaSeconds":null,"ready":false,"paused":false,"activelySynced":false,"ioStatus":"ok","error":null,
             "autoFinalize":true,"autoDismiss":false,"createdAt":"2026-11-30T10:00:00Z","updatedAt":"2026-11-30T10:00:05Z",
             "finishedAt":"2026-11-30T10:00:05Z"}
            """;

        var info = EfJobStore.DeserializeSnapshot(old);

        Assert.Equal("m0", info.Id);
        Assert.Equal(4096, info.BytesCopied);
        Assert.Equal(Created.AddSeconds(5), info.FinishedAt);
        Assert.Null(info.Outcome);
        Assert.Null(info.CancelMode);
        Assert.Null(info.ReadyAt);
    }
}
