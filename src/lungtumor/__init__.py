"""lungtumor: segment lung tumours in chest CT and measure them.

Axis conventions (used everywhere): voxel arrays are indexed (z, y, x); spacing, origin and
direction are given in (x, y, z) order, in millimetres, exactly as SimpleITK reports them (LPS world).
"""

__version__ = "0.1.0"
