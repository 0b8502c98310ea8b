using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using BlockMirror.Nbd;

namespace BlockMirror.Api.Tests.Crash;

/// <summary>
/// Writers through both doors of a node whose image lives on a full file system: HTTP (data, zero
/// without unmap) and NBD (write, write-zeroes with no-hole). Most requests fail with ENOSPC (409
/// io-error, or NBD errno 28), some after changing part of their range. Every answered request,
/// failed or not, is kept with the phase it was sent and answered in; <see cref="OnFailure"/> runs
/// after each failure is kept, so a kill from it comes right after a failed write's answer.
/// </summary>
internal sealed class FailingWriters(ChildService child, NbdClient nbd, string node, long size, int seed)
{
    private const uint ENOSPC = 28;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _loops = [];
    private readonly List<string> _errors = [];
    private readonly List<Answered> _answered = [];
    private int _failures;
    private int _phase;

    /// <summary>One answered request: its range, whether it failed, and the phase at its send and at its answer.</summary>
    public readonly record struct Answered(long Offset, long Length, bool Failed, int SentIn, int AnsweredIn);

    /// <summary>Set by the test as it moves on (read by a writer before a send and after an answer).</summary>
    public int Phase
    {
        get => Volatile.Read(ref _phase);
        set => Volatile.Write(ref _phase, value);
    }

    /// <summary>Called with the running count of failures after each failed request is kept.</summary>
    public Action<int>? OnFailure { get; set; }

    public int Failures => Volatile.Read(ref _failures);

    public IReadOnlyList<Answered> All
    {
        get
        {
            lock (_answered)
                return [.. _answered];
        }
    }

    /// <summary>Answers other than success and ENOSPC while the service was alive: none may happen.</summary>
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
        for (var i = 0; i < nbdWriters; i++)
        {
            var random = new Random(seed * 31 + 100 + i);
            _loops.Add(Task.Run(() => LoopAsync(random, NbdWriteAsync)));
        }
    }

    public async Task StopAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_loops);
        _loops.Clear();
    }

    private async Task LoopAsync(Random random, Func<Random, long, int, Task<bool?>> write)
    {
        while (!_stop.IsCancellationRequested && !child.Killed)
        {
            var length = random.Next(2) == 0 ? 4096 * random.Next(1, 33) : random.Next(1, 300_000);
            var offset = random.NextInt64(0, size - length + 1);
            var sentIn = Phase;
            bool? failed;
            try
            {
                failed = await write(random, offset, length);
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
            if (failed is not { } f)
                return;
            lock (_answered)
                _answered.Add(new Answered(offset, length, f, sentIn, Phase));
            if (f)
                OnFailure?.Invoke(Interlocked.Increment(ref _failures));
        }
    }

    /// <summary>false = succeeded, true = failed with ENOSPC, null = an unexpected answer (kept in <see cref="Errors"/>).</summary>
    private async Task<bool?> HttpWriteAsync(Random random, long offset, int length)
    {
        HttpResponseMessage response;
        if (random.Next(4) == 0)
        {
            response = await child.Http.PostAsJsonAsync($"/api/v1/nodes/{node}/zero", new { offset, length, mayUnmap = false });
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
                return false;
            var text = await response.Content.ReadAsStringAsync();
            if (response.StatusCode == HttpStatusCode.Conflict && (string?)JsonNode.Parse(text)?["code"] == "io-error")
                return true;
            if (!child.Killed)
            {
                lock (_errors)
                    _errors.Add($"{offset}+{length}: {(int)response.StatusCode} {text}");
            }
            return null;
        }
    }

    private async Task<bool?> NbdWriteAsync(Random random, long offset, int length)
    {
        try
        {
            if (random.Next(4) == 0)
            {
                await nbd.WriteZeroesAsync(offset, length, noHole: true);
            }
            else
            {
                var data = new byte[length];
                random.NextBytes(data);
                await nbd.WriteAsync(offset, data);
            }
            return false;
        }
        catch (NbdException e) when (e.Errno == ENOSPC)
        {
            return true;
        }
    }
}
