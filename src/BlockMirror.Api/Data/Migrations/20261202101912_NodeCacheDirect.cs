using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace BlockMirror.Api.Data.Migrations
{
    /// <inheritdoc />
    public partial class NodeCacheDirect : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<bool>(
                name: "CacheDirect",
                table: "nodes",
                type: "INTEGER",
                nullable: false,
                defaultValue: false);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "CacheDirect",
                table: "nodes");
        }
    }
}
