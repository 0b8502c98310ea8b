using System.Text.Json.Serialization.Metadata;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The member a user meant when the request has one this API does not know: QMP's spellings
/// (<c>bitmap-mode</c>, <c>buf-size</c>, <c>on-source-error</c>, <c>auto-finalize</c>...) are this
/// API's names in camelCase, and a few are named differently here (<c>job-id</c> is <c>id</c>).
/// </summary>
public static class QemuSpellings
{
    /// <summary>QMP argument names whose member here has another name (candidates, in order).</summary>
    private static readonly Dictionary<string, string[]> s_renamed = new(StringComparer.OrdinalIgnoreCase)
    {
        ["job-id"] = ["id"],
        ["node-name"] = ["name", "node"],
        ["bitmaps"] = ["sources"],
    };

    /// <summary>The member of <paramref name="parent"/> that <paramref name="member"/> probably means, or null.</summary>
    public static string? Suggest(string member, JsonTypeInfo parent)
    {
        var names = parent.Properties.Select(p => p.Name).ToList();
        if (s_renamed.TryGetValue(member, out var candidates) && candidates.FirstOrDefault(names.Contains) is { } renamed)
            return renamed;
        var key = Normalize(member);
        return names.FirstOrDefault(n => Normalize(n) == key);
    }

    /// <summary>Whether the unknown member looks like QMP's spelling (lower-case words joined by '-').</summary>
    public static bool IsQemuStyle(string member) => member.Contains('-') || s_renamed.ContainsKey(member);

    // bitmap-mode, bitmap_mode, BitmapMode and bitmapmode all mean bitmapMode.
    private static string Normalize(string name) =>
        new([.. name.Where(char.IsLetterOrDigit).Select(char.ToLowerInvariant)]);
}
