using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace BlockMirror.Api.Data.Migrations
{
    /// <inheritdoc />
    // Bitmap granularities go up to 2^31 bytes, past Int32. SQLite stores int and long alike as
    // INTEGER, so there is nothing to alter; the migration carries the model's new CLR type.
    public partial class BitmapGranularityInt64 : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {

        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {

        }
    }
}
