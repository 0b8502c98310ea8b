namespace BlockMirror.Core;

/// <summary>The naming rule of the API: 1–128 characters of [A-Za-z0-9._:-], starting with a letter, digit or '_'.</summary>
public static class Names
{
    public const int MaxLength = 128;

    public static bool IsValid(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > MaxLength)
            return false;
        if (!(char.IsAsciiLetterOrDigit(name[0]) || name[0] == '_'))
            return false;
        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '-'))
                return false;
        }
        return true;
    }

    /// <summary>Throws <c>invalid-name</c> unless <paramref name="name"/> follows the rule.</summary>
    public static string Validate(string what, string? name)
    {
        if (!IsValid(name))
            throw BlockErrors.InvalidName(what, name ?? "");
        return name!;
    }
}
