using System.Collections;
using System.ComponentModel.DataAnnotations;
using System.Reflection;
using System.Text.Json;

namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// Checks the members a request contract marks <see cref="RequiredAttribute"/> (the same marks
/// the OpenAPI schema lists as <c>required</c>), through nested objects and lists, and reports every
/// missing one at once, before the endpoint runs: a request is refused for its shape before any
/// node, bitmap or job is looked at.
/// </summary>
public static class RequiredMembers
{
    /// <summary>Adds an error for every required member missing in <paramref name="value"/> (a contract object).</summary>
    public static void Check(object? value, string prefix, IDictionary<string, string[]> errors)
    {
        if (value is null || !IsContract(value.GetType()))
            return;
        foreach (var property in value.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            var field = Join(prefix, JsonNamingPolicy.CamelCase.ConvertName(property.Name));
            var member = property.GetValue(value);
            if (member is null)
            {
                if (property.GetCustomAttribute<RequiredAttribute>() is not null)
                    errors[field] = [RequestValidationException.RequiredMessage];
                continue;
            }
            if (member is IEnumerable list and not string)
                CheckItems(list, field, errors);
            else
                Check(member, field, errors);
        }
    }

    private static void CheckItems(IEnumerable list, string field, IDictionary<string, string[]> errors)
    {
        var i = 0;
        foreach (var item in list)
        {
            var itemField = $"{field}[{i++}]";
            if (item is null)
                errors[itemField] = ["must not be null"];
            else
                Check(item, itemField, errors);
        }
    }

    private static bool IsContract(Type type) => type.Namespace == typeof(Contracts.ItemsDto<>).Namespace;

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : $"{prefix}.{name}";
}
