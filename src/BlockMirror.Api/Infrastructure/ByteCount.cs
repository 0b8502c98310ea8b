using System.Globalization;
using System.Text.RegularExpressions;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// A byte count as users type it: a plain integer (<c>65536</c>) or a size with a binary suffix
/// (<c>64K</c>, <c>1M</c>, <c>1.5G</c>, <c>64KiB</c>, <c>512B</c>; K, M, G, T, P are powers of 1024,
/// case-insensitive), the syntax the dashboard accepts and close to QEMU's qemu_strtosz. A fraction
/// must come out as a whole number of bytes. Bound from query strings by minimal APIs
/// (<see cref="TryParse(string?, out ByteCount)"/>); JSON members use <see cref="ByteCountJsonConverter"/>.
/// </summary>
public readonly partial record struct ByteCount(long Value)
{
    /// <summary>What a byte count may look like, for error messages and documentation.</summary>
    public const string Syntax = "an integer byte count or a size such as 64K, 1M, 1G (K, M, G, T, P: powers of 1024)";

    private const string Units = "KMGTP";

    public static implicit operator long(ByteCount count) => count.Value;

    /// <summary>Query binding: true for every text <see cref="TryParseBytes"/> accepts.</summary>
    public static bool TryParse(string? text, out ByteCount result)
    {
        var ok = TryParseBytes(text, out var value);
        result = new ByteCount(value);
        return ok;
    }

    /// <summary>Parses the size syntax; false for anything else, fractions of a byte and values past 2^63-1.</summary>
    public static bool TryParseBytes(string? text, out long bytes)
    {
        bytes = 0;
        if (text is null || text.Length > 64)
            return false;
        // A plain integer as it is, negative too: the range check that follows names it (out-of-range).
        if (long.TryParse(text, NumberStyles.AllowLeadingSign | NumberStyles.AllowLeadingWhite | NumberStyles.AllowTrailingWhite, CultureInfo.InvariantCulture, out bytes))
            return true;
        var m = SizePattern().Match(text);
        if (!m.Success)
            return false;
        var unit = m.Groups["unit"].Value;
        var power = unit.Length == 0 ? 0 : Units.IndexOf(char.ToUpperInvariant(unit[0])) + 1;
        try
        {
            var number = decimal.Parse(m.Groups["number"].Value, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture);
            for (var i = 0; i < power; i++)
                number *= 1024;
            if (number != decimal.Truncate(number) || number > long.MaxValue)
                return false;
            bytes = (long)number;
            return true;
        }
        catch (OverflowException)
        {
            return false;
        }
    }

    public override string ToString() => Value.ToString(CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^\s*(?<number>[0-9]+(\.[0-9]+)?)\s*((?<unit>[KMGTP])(i?B)?|B)?\s*$", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex SizePattern();
}
