using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.Api.Tests.Infrastructure;

namespace BlockMirror.Api.Tests;

/// <summary>
/// Issue 12 items 1–3: a request the API does not understand is refused naming the field (and,
/// for QEMU's spellings, the member meant), before anything is looked up, and changes nothing.
/// </summary>
public sealed class StrictRequestTests : ServiceTest
{
    private const long MiB = 1L << 20;

    protected override async Task SetUpAsync()
    {
        await Http.CreateNodeAsync("disk0", 8 * MiB);
        await Http.CreateNodeAsync("copy", 8 * MiB);
        await Http.AddBitmapAsync("disk0", "b0");
    }

    private async Task<JsonNode> SendAsync(HttpMethod method, string url, string json, int status, string code)
    {
        using var request = new HttpRequestMessage(method, url) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await Http.SendAsync(request);
        return await ApiClient.ExpectProblemAsync(response, status, code);
    }

    private Task<JsonNode> PostAsync(string url, string json, int status = 400, string code = "invalid-request") =>
        SendAsync(HttpMethod.Post, url, json, status, code);

    /// <summary>The messages the errors map holds for <paramref name="field"/> (fails if it names none).</summary>
    private static string ErrorOf(JsonNode problem, string field)
    {
        var errors = problem["errors"]?.AsObject();
        Assert.True(errors is not null && errors.ContainsKey(field), $"errors does not name '{field}': {problem.ToJsonString()}");
        return string.Join(" | ", errors![field]!.AsArray().Select(m => (string)m!));
    }

    private async Task AssertNoJobsAsync() => Assert.Empty((await Http.GetJsonAsync("/api/v1/jobs"))["items"]!.AsArray());

    // ---- item 1: unknown members ----------------------------------------------------------------

    [Fact]
    public async Task A_qemu_spelling_is_refused_naming_the_member_meant_and_starts_nothing()
    {
        // The request from the issue: bitmap-mode used to be ignored, and the job ran in mode always
        // (which empties the user's bitmap).
        var p = await PostAsync("/api/v1/jobs/mirror",
            """{"device":"disk0","target":"copy","sync":"full","bitmap":"b0","bitmap-mode":"never"}""", code: "unknown-field");
        Assert.Contains("bitmapMode", ErrorOf(p, "bitmap-mode"), StringComparison.Ordinal);
        Assert.Contains("bitmapMode", (string?)p["detail"], StringComparison.Ordinal);
        await AssertNoJobsAsync();
        var b0 = await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0");
        Assert.False((bool)b0["busy"]!);
        Assert.True((bool)b0["recording"]!);
    }

    [Theory]
    [InlineData("job-id", "id")]
    [InlineData("buf-size", "bufSize")]
    [InlineData("on-source-error", "onSourceError")]
    [InlineData("on-target-error", "onTargetError")]
    [InlineData("copy-mode", "copyMode")]
    [InlineData("auto-finalize", "autoFinalize")]
    [InlineData("auto-dismiss", "autoDismiss")]
    [InlineData("bitmap_mode", "bitmapMode")]
    public async Task Each_qemu_argument_name_gets_its_hint(string member, string meant)
    {
        var p = await PostAsync("/api/v1/jobs/mirror",
            $$"""{"device":"disk0","target":"copy","sync":"full","{{member}}":"x"}""", code: "unknown-field");
        Assert.Contains($"'{meant}'", ErrorOf(p, member), StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task Unknown_members_of_nested_objects_are_named_with_their_path()
    {
        var p = await PostAsync("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","create":{"size":1048576,"sparse":true}}""", code: "unknown-field");
        Assert.Contains("size", ErrorOf(p, "create.sparse"), StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(Factory.ImageRoot, "n.img")));

        p = await PostAsync("/api/v1/nodes", """{"node-name":"n","driver":"raw","path":"n.img"}""", code: "unknown-field");
        Assert.Contains("'name'", ErrorOf(p, "node-name"), StringComparison.Ordinal);

        p = await PostAsync("/api/v1/transactions",
            """{"actions":[{"type":"mirror-start","job":{"device":"disk0","target":"copy","sync":"full","buf-size":65536}}]}""", code: "unknown-field");
        Assert.Contains("'bufSize'", ErrorOf(p, "actions[0].job.buf-size"), StringComparison.Ordinal);
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task A_transaction_action_refuses_members_its_type_does_not_take()
    {
        // QMP gives each action type its own schema: a granularity on bitmap-clear is not ignored.
        var p = await PostAsync("/api/v1/transactions",
            """{"actions":[{"type":"bitmap-add","node":"disk0","name":"x"},{"type":"bitmap-clear","node":"disk0","name":"b0","granularity":65536}]}""",
            code: "unknown-field");
        Assert.Contains("bitmap-clear", ErrorOf(p, "actions[1].granularity"), StringComparison.Ordinal);
        Assert.Single((await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps"))["items"]!.AsArray());

        p = await PostAsync("/api/v1/transactions", """{"actions":[{"type":"bitmap-frobnicate","node":"disk0","name":"b0"}]}""");
        Assert.Contains("bitmap-merge", ErrorOf(p, "actions[0].type"), StringComparison.Ordinal);
        p = await PostAsync("/api/v1/transactions", """{"actions":[{"type":"bitmap-merge","node":"disk0","name":"b0"}]}""");
        Assert.Contains("required", ErrorOf(p, "actions[0].sources"), StringComparison.Ordinal);
    }

    // ---- item 2: errors name the field ------------------------------------------------------------

    [Theory]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","create":{"size":"big"}}""", "create.size", "expected an integer byte count")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","create":{"size":1.5}}""", "create.size", "got 1.5")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","create":{"size":"0.3K"}}""", "create.size", "expected an integer byte count")]
    [InlineData("/api/v1/nodes", """{"name":5,"driver":"raw","path":"n.img"}""", "name", "expected a string, got 5")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","readOnly":"yes"}""", "readOnly", "expected true or false, got \"yes\"")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw","path":"n.img","create":"1G"}""", "create", "expected an object")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"qcow3","path":"n.img"}""", "driver", "raw, nbd")]
    [InlineData("/api/v1/nodes", """{"name":"n","driver":"raw"}""", "path", "required")]
    [InlineData("/api/v1/nodes", """[]""", "body", "expected an object")]
    [InlineData("/api/v1/nodes/disk0/bitmaps", """{"name":"b1","granularity":"64Q"}""", "granularity", "64K")]
    [InlineData("/api/v1/nodes/disk0/bitmaps/b0/merge", """{"sources":{"name":"b0"}}""", "sources", "expected an array")]
    [InlineData("/api/v1/nodes/disk0/bitmaps/b0/merge", """{"sources":[{"node":"disk0"}]}""", "sources[0].name", "required")]
    [InlineData("/api/v1/jobs/mirror", """{"device":"disk0","target":"copy","sync":"incremental"}""", "sync", "one of: full, top, none")]
    [InlineData("/api/v1/jobs/mirror", """{"device":"disk0","target":"copy","sync":"full","speed":"fast"}""", "speed", "got \"fast\"")]
    [InlineData("/api/v1/jobs/mirror", """{"device":"disk0","target":"copy","sync":"full","copyMode":1}""", "copyMode", "background, write-blocking")]
    [InlineData("/api/v1/jobs/mirror", """{"device":"disk0","target":"copy","sync":"full","onTargetError":"retry"}""", "onTargetError", "report, ignore, stop, enospc")]
    [InlineData("/api/v1/transactions", """{"actions":[{"type":"mirror-start","job":{"device":"disk0","target":"copy","sync":"fast"}}]}""", "actions[0].job.sync", "one of: full, top, none")]
    public async Task A_value_of_the_wrong_kind_names_the_field_and_what_was_expected(string url, string json, string field, string message)
    {
        var p = await PostAsync(url, json);
        Assert.Contains(message, ErrorOf(p, field), StringComparison.Ordinal);
        Assert.Contains(field, (string?)p["detail"], StringComparison.Ordinal);
        await AssertNoJobsAsync();
        Assert.Equal(2, (await Http.GetJsonAsync("/api/v1/nodes"))["items"]!.AsArray().Count);
    }

    [Theory]
    [InlineData("""{"name":"n","driver":"raw","path":"n.img","create":{"size":""", "line 1")]
    [InlineData("{\n  \"name\": \"n\",\n  \"driver\": raw\n}", "line 3")]
    public async Task Malformed_json_says_where(string json, string where)
    {
        var p = await PostAsync("/api/v1/nodes", json);
        var message = ErrorOf(p, "body");
        Assert.Contains("malformed JSON", message, StringComparison.Ordinal);
        Assert.Contains(where, message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_missing_body_is_named()
    {
        using var empty = new StringContent("", Encoding.UTF8, "application/json");
        using var r = await Http.PostAsync("/api/v1/nodes", empty);
        var p = await ApiClient.ExpectProblemAsync(r, 400, "invalid-request");
        Assert.Contains("required", ErrorOf(p, "body"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Sizes_are_accepted_as_users_type_them()
    {
        var node = await Http.PostJsonAsync("/api/v1/nodes", new { name = "n", driver = "raw", path = "n.img", create = new { size = "8M" } }, HttpStatusCode.Created);
        Assert.Equal(8 * MiB, (long)node["size"]!);
        var bitmap = await Http.PostJsonAsync("/api/v1/nodes/n/bitmaps", new { name = "b", granularity = "64K" }, HttpStatusCode.Created);
        Assert.Equal(65536, (long)bitmap["granularity"]!);
        var bitmap2 = await Http.PostJsonAsync("/api/v1/nodes/n/bitmaps", new { name = "b2", granularity = "1.5K" }, HttpStatusCode.BadRequest);
        Assert.Equal("invalid-granularity", (string?)bitmap2["code"]); // 1536 bytes parses; it is not a power of two
        var job = await Http.PostJsonAsync("/api/v1/jobs/mirror",
            new { id = "j", sync = "full", device = "disk0", target = "copy", speed = "1M", bufSize = "4MiB", granularity = "128k", autoDismiss = false }, HttpStatusCode.Created);
        Assert.Equal(MiB, (long)job["speed"]!);
        Assert.Equal(4 * MiB, (long)job["bufSize"]!);
        Assert.Equal(131072, (long)job["granularity"]!);
        using var patch = await Http.PatchAsync("/api/v1/jobs/j", new StringContent("""{"speed":"2M"}""", Encoding.UTF8, "application/json"));
        var changed = await ApiClient.ExpectAsync(patch, HttpStatusCode.OK);
        Assert.Equal(2 * MiB, (long)changed["speed"]!);
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = true });

        // Query byte counts too.
        var data = ApiClient.Pattern(4096, 3);
        await Http.WriteAsync("n", MiB, data);
        using var read = await Http.GetAsync("/api/v1/nodes/n/data?offset=1M&length=4K");
        Assert.Equal(HttpStatusCode.OK, read.StatusCode);
        Assert.Equal(data, await read.Content.ReadAsByteArrayAsync());
    }

    [Fact]
    public async Task Data_path_query_parameters_are_named()
    {
        using (var r = await Http.GetAsync("/api/v1/nodes/disk0/data?offset=0"))
            Assert.Contains("required", ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "length"), StringComparison.Ordinal);
        using (var r = await Http.GetAsync("/api/v1/nodes/disk0/data?offset=0&length=lots"))
            Assert.Contains("got \"lots\"", ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "length"), StringComparison.Ordinal);
        using (var content = Bytes(16))
        using (var r = await Http.PutAsync("/api/v1/nodes/disk0/data", content))
            Assert.Contains("required", ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "offset"), StringComparison.Ordinal);
        using (var r = await Http.GetAsync("/api/v1/nodes/disk0/extents?offset=x"))
            ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "offset");
        using (var r = await Http.DeleteAsync("/api/v1/nodes/copy?deleteImage=perhaps"))
            Assert.Contains("true or false", ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "deleteImage"), StringComparison.Ordinal);
        Assert.Equal(0, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["count"]!);
        Assert.True(File.Exists(Path.Combine(Factory.ImageRoot, "copy.img")));
    }

    [Fact]
    public async Task Job_list_parameters_are_named()
    {
        using (var r = await Http.GetAsync("/api/v1/jobs?include=everything"))
            Assert.Contains("dismissed, history", ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "include"), StringComparison.Ordinal);
        using (var r = await Http.GetAsync("/api/v1/jobs?include=history&limit=0"))
            ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "limit");
        using (var r = await Http.GetAsync("/api/v1/jobs?include=history&after=bogus"))
            ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "after");
        using (var r = await Http.GetAsync("/api/v1/jobs?limit=10"))
            ErrorOf(await ApiClient.ExpectProblemAsync(r, 400, "invalid-request"), "limit");
    }

    [Theory]
    [InlineData("application/json")]
    [InlineData("application/x-www-form-urlencoded")]
    [InlineData("text/plain")]
    public async Task Put_data_of_another_type_is_415_saying_octet_stream(string type)
    {
        using var content = new StringContent("""{"data":"AAAA"}""", Encoding.UTF8);
        content.Headers.ContentType = new MediaTypeHeaderValue(type);
        using var r = await Http.PutAsync("/api/v1/nodes/disk0/data?offset=0", content);
        var p = await ApiClient.ExpectProblemAsync(r, 415, "unsupported-media-type");
        Assert.Contains("application/octet-stream", (string?)p["detail"], StringComparison.Ordinal);
        Assert.Equal(0, (long)(await Http.GetJsonAsync("/api/v1/nodes/disk0/bitmaps/b0"))["count"]!);
        Assert.All((await Http.GetJsonAsync("/api/v1/nodes/disk0/extents"))["items"]!.AsArray(), e => Assert.Equal("zero", (string?)e!["type"]));
    }

    [Fact]
    public async Task A_json_body_of_another_type_is_415_saying_json()
    {
        using var content = new StringContent("{}", Encoding.UTF8, "text/plain");
        using var r = await Http.PostAsync("/api/v1/nodes", content);
        var p = await ApiClient.ExpectProblemAsync(r, 415, "unsupported-media-type");
        Assert.Contains("application/json", (string?)p["detail"], StringComparison.Ordinal);
    }

    // ---- item 3: required means required, validated before any state -----------------------------

    [Fact]
    public async Task Sync_is_required_and_every_missing_member_is_named_at_once()
    {
        var p = await PostAsync("/api/v1/jobs/mirror", """{"device":"disk0","target":"copy"}""");
        Assert.Equal("required", ErrorOf(p, "sync"));
        await AssertNoJobsAsync();

        p = await PostAsync("/api/v1/jobs/mirror", "{}");
        Assert.Equal(["device", "sync", "target"], p["errors"]!.AsObject().Select(e => e.Key).Order().ToArray());

        p = await PostAsync("/api/v1/transactions", """{"actions":[{"type":"mirror-start","job":{"device":"disk0","target":"copy"}},{"node":"disk0"}]}""");
        ErrorOf(p, "actions[0].job.sync");
        ErrorOf(p, "actions[1].type");
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task Fields_are_checked_before_the_state_of_nodes_and_jobs()
    {
        // A busy device: a request with a field fault is refused for the field, not for the state.
        await Http.PostJsonAsync("/api/v1/jobs/mirror", new { id = "j", sync = "full", device = "disk0", target = "copy", speed = 1 }, HttpStatusCode.Created);
        await Http.CreateNodeAsync("other", 8 * MiB);
        var p = await PostAsync("/api/v1/jobs/mirror", """{"device":"disk0","target":"other","sync":"incremental"}""");
        ErrorOf(p, "sync");
        p = await PostAsync("/api/v1/jobs/mirror", """{"device":"disk0","target":"other","sync":"full","bitmap-mode":"never"}""", code: "unknown-field");
        ErrorOf(p, "bitmap-mode");
        p = await PostAsync("/api/v1/jobs/mirror", """{"device":"disk0","target":"other"}""");
        ErrorOf(p, "sync");
        // An existing name with a bad driver: the driver, not node-exists.
        p = await PostAsync("/api/v1/nodes", """{"name":"disk0","driver":"qcow3","path":"x.img"}""");
        ErrorOf(p, "driver");
        await Http.PostJsonAsync("/api/v1/jobs/j/cancel", new { force = true });
    }

    private static ByteArrayContent Bytes(int length)
    {
        var content = new ByteArrayContent(new byte[length]);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        return content;
    }
}
