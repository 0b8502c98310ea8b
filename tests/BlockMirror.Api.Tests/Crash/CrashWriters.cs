using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// Writers through both doors of one node, each with its own seeded generator: HTTP (data, zero) and
/// NBD (write, write-zeroes, trim). Every acknowledged request is recorded in <see cref="AckedWrites"/>
/// before <see cref="OnAck"/> runs, so a kill from the callback comes right after an acknowledgement.
/// </summary>
internal sealed class CrashWriters(ChildService child, NbdClient? nbd, string node, long size, AckedWrites acked, int seed)
{
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _loops = [];
    private readonly List<string> _errors = [];
    private int _acks;

    /// <summary>Called with the running count after each acknowledgement (on the writer's thread).</summary>
    public Action<int>? OnAck { get; set; }

    public int Acks => Volatile.Read(ref _acks);

    /// <summary>Refusals while the service was alive: none may happen.</summary>
    public IReadOnlyList<string> Errors
    {
        get
        {
            lock (_errors)
                return [.. _errors];
        }
    }

    public void Start(int httpWriters, int nbdWriters)
    {
        for (var i = 0; i < httpWriters; i++)
        {
            var random = new Random(seed * 31 + i);
            _loops.Add(Task.Run(() => LoopAsync(random, HttpWriteAsync)));
        }
        for (var i = 0; i < nbdWriters && nbd is not null; i++)
        {
            var random = new Random(seed * 31 + 100 + i);
            _loops.Add(Task.Run(() => LoopAsync(random, NbdWriteAsync)));
        }
    }

    /// <summary>Lets every writer finish its current request, then returns.</summary>
    public async Task StopAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_loops);
        _loops.Clear();
    }

    private async Task LoopAsync(Random random, Func<Random, long, int, Task<bool>> write)
    {
        while (!_stop.IsCancellationRequested && !child.Killed)
        {
            // Lengths from one byte to 256 KiB, unaligned as often as aligned.
            var length = random.Next(4) switch
            {
                0 => random.Next(1, 600),
                1 => 4096 * random.Next(1, 5),
                2 => random.Next(1, 140_000),
                _ => 65536 * random.Next(1, 5),
            };
            var offset = random.NextInt64(0, size - length + 1);
            if (random.Next(2) == 0)
                offset &= ~4095L;
            bool ok;
            // Taken before the write is sent: an acknowledgement says nothing about ordering against an
            // operation that started while the write was in flight.
            var epoch = acked.Epoch;
            try
            {
                ok = await write(random, offset, length);
            }
            catch (Exception) when (child.Killed)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or IOException or TaskCanceledException)
            {
                lock (_errors)
                    _errors.Add($"{offset}+{length}: {e.GetType().Name}: {e.Message}");
                return;
            }
            if (!ok)
                return;
            acked.Record(offset, length, epoch);
            OnAck?.Invoke(Interlocked.Increment(ref _acks));
        }
    }

    private async Task<bool> HttpWriteAsync(Random random, long offset, int length)
    {
        HttpResponseMessage response;
        if (random.Next(8) == 0)
        {
            response = await child.Http.PostAsJsonAsync($"/api/v1/nodes/{node}/zero", new { offset, length, mayUnmap = random.Next(2) == 0 });
        }
        else
        {
            var data = new byte[length];
            random.NextBytes(data);
            using var content = new ByteArrayContent(data);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            response = await child.Http.PutAsync($"/api/v1/nodes/{node}/data?offset={offset}", content);
        }
        using (response)
        {
            if (response.StatusCode == HttpStatusCode.NoContent)
                return true;
            if (!child.Killed)
            {
                var text = await response.Content.ReadAsStringAsync();
                lock (_errors)
                    _errors.Add($"{offset}+{length}: {(int)response.StatusCode} {text}");
            }
            return false;
        }
    }

    private async Task<bool> NbdWriteAsync(Random random, long offset, int length)
    {
        switch (random.Next(10))
        {
            case 0:
                await nbd!.WriteZeroesAsync(offset, length);
                break;
            case 1:
                await nbd!.TrimAsync(offset, length);
                break;
            default:
                var data = new byte[length];
                random.NextBytes(data);
                await nbd!.WriteAsync(offset, data);
                break;
        }
        return true;
    }
}
